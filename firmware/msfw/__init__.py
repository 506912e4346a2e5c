# microstim firmware
VERSION = "0.1.0"


def unload(name):
    """Forget a submodule (msfw.<name>) so the garbage collector can free its code."""
    import sys

    sys.modules.pop("msfw." + name, None)
    g = globals()
    if name in g:
        del g[name]

# microstim firmware
VERSION = "0.1.0"


def unload(name):
    """Forget a submodule (msfw.<name>) so the garbage collector can free its code."""
    import sys

    sys.modules.pop("msfw." + name, None)
    g = globals()
    if name in g:
        del g[name]


class Board:
    """A board definition's values (msfw.board.load() fills them in after checking it)."""

    def pin(self, name):
        return self.pins.get(name)

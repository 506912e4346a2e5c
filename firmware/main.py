# Runs after boot.py on power-up and hard reset (not after a raw-REPL soft reset).
# The app never starts stimulating by itself: a session needs a button press or a
# host command. Whatever ends the app (exception, Ctrl-C from a host tool, a session
# that finishes) leaves the output off.
import safe

try:
    # Board definition and self-check first, with the heap empty (msfw/post.py).
    from msfw import post

    powered = post.run()
    if powered is not None:
        del post
        from msfw import app

        app.run(*powered)
finally:
    safe.all_off()

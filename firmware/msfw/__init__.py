# microstim firmware
VERSION = "0.1.0"

# Runs first after every reset, soft or hard. A soft reset keeps DAC and GPIO levels, so
# before anything else the output is driven to its safe state: current source enable
# low, polarity low, amplitude DAC at 0. Nothing here starts stimulation, ever.
import safe

safe.all_off()
safe.arm_watchdog()

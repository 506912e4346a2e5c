"""One error tree for the host side: every failure a user can cause or meet is a
MicrostimError with a message that says what to do next, and an exit code."""


class MicrostimError(Exception):
    exit_code = 1


class UsageError(MicrostimError):
    exit_code = 2


class DeviceError(MicrostimError):
    exit_code = 3

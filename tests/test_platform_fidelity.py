"""The virtual board's machine/esp32/time behave like the ESP32 port's, limits included,
so code that runs here does not fail on a board for reasons the fakes hid."""


def lines(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split()


def test_pwm_refuses_below_1hz(mp):
    out = lines(mp("""
        p = machine.Pin(27, machine.Pin.OUT)
        try:
            machine.PWM(p, freq=0.5, duty_u16=100)
            print("accepted")
        except ValueError:
            print("refused")
        machine.PWM(p, freq=1, duty_u16=32768)
        print("1hz-ok")
    """))
    assert out == ["refused", "1hz-ok"]


def test_dac_only_on_dac_pins_and_8_bits(mp):
    out = lines(mp("""
        for g in (25, 26, 27):
            try:
                machine.DAC(machine.Pin(g)); print(g, "ok")
            except ValueError:
                print(g, "invalid")
        d = machine.DAC(machine.Pin(25))
        for v in (255, 256, -1):
            try:
                d.write(v); print(v, "ok")
            except ValueError:
                print(v, "range")
    """))
    assert out == ["25", "ok", "26", "ok", "27", "invalid", "255", "ok", "256", "range", "-1", "range"]


def test_dac_creation_writes_zero(mp):
    out = lines(mp("""
        W.dac[25] = 200
        machine.DAC(machine.Pin(25))
        print(W.dac[25])
    """))
    assert out == ["0"]


def test_pins_checked_against_the_chip(mp):
    out = lines(mp("""
        for g, mode in ((20, machine.Pin.IN), (34, machine.Pin.OUT), (34, machine.Pin.IN), (2, machine.Pin.OUT)):
            try:
                machine.Pin(g, mode); print(g, "ok")
            except ValueError:
                print(g, "bad")
    """))
    assert out == ["20", "bad", "34", "bad", "34", "ok", "2", "ok"]


def test_timer_is_soft_only(mp):
    out = lines(mp("""
        try:
            machine.Timer(0, period=10, callback=print, hard=True); print("hard-ok")
        except ValueError:
            print("hard-refused")
        n = [0]
        def cb(t):
            n[0] += 1
        t = machine.Timer(0, period=10, callback=cb)
        time.sleep_ms(105)
        t.deinit()
        print(n[0])
    """))
    assert out == ["hard-refused", "10"]


def test_watchdog_resets_when_starved(mp):
    r = mp("""
        wdt = machine.WDT(timeout=100)
        for _ in range(5):
            time.sleep_ms(50); wdt.feed()
        print("fed-ok")
        try:
            time.sleep_ms(150)
            print("no-reset")
        except SystemExit as e:
            print(e.args[0].replace(" ", "_"))
    """)
    assert lines(r) == ["fed-ok", "reset_3"]


def test_ticks_wrap_like_the_esp32(mp):
    out = lines(mp("""
        W.now_us = (1 << 30) - 5
        a = time.ticks_us()
        time.sleep_us(10)
        b = time.ticks_us()
        print(b < a, time.ticks_diff(b, a))
    """))
    assert out[0] == "True" and 10 <= int(out[1]) <= 12


def test_rmt_loops_a_pattern_in_hardware(mp):
    out = lines(mp("""
        p = machine.Pin(27, machine.Pin.OUT)
        r = esp32.RMT(pin=p, resolution_hz=1000000, idle_level=False)
        r.loop_count(-1)
        r.write_pulses((100, 900), (1, 0))
        t0 = W.out[27].t0
        print(W.out[27].level_at(t0 + 50), W.out[27].level_at(t0 + 500), W.out[27].level_at(t0 + 1050))
        try:
            r.write_pulses((0, 10), (1, 0)); print("zero-ok")
        except ValueError:
            print("zero-refused")
        r.deinit()
        print(W.output_level(27))
    """))
    assert out == ["1", "0", "1", "zero-refused", "0"]


def test_hardware_calls_do_not_count_as_firmware_allocation(mp):
    # The firmware's hot path runs under heap_lock in tests; the simulated hardware
    # allocates internally (floats on the unix port) and must not trip that lock, while
    # the firmware's own allocation still must.
    out = lines(mp("""
        import micropython
        d = machine.DAC(machine.Pin(25)); p = machine.Pin(27, machine.Pin.OUT)
        micropython.heap_lock()
        for i in range(100):
            d.write(i); p.value(i & 1); time.ticks_us(); time.sleep_us(100)
        try:
            x = [1, 2, 3]
            print("alloc-allowed")
        except MemoryError:
            print("alloc-caught")
        micropython.heap_unlock()
        print("ok")
    """))
    assert out == ["alloc-caught", "ok"]

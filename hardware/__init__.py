"""Sort trigger outputs and fire-time scheduling.

* :mod:`hardware.timing` — ``TimingSettings``, ``fire_time_ns`` and the camera→host ``ClockMap``;
* :mod:`hardware.trigger` — the ``Trigger`` contract, ``FireRequest``/``FireRecord``/``Ack``, the
  ``TRIGGERS`` registry and ``make_trigger``;
* backends, each importing its SDK lazily: ``dryrun`` (null, log), ``serial_trigger`` (pyserial +
  the firmware in ``hardware/firmware``), ``visa_trigger`` (pyvisa), ``camera_line`` (GenICam
  user output through the camera backend), ``nidaq`` (NI-DAQmx);
* :mod:`hardware.scheduler` — host-timed pulses for outputs that cannot delay by themselves;
* :mod:`hardware.bench` — ``mimlsort bench`` figures for the trigger path.

Nothing here imports ``app``, ``tracking`` or ``acquisition``: triggers receive plain values.
"""

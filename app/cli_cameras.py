"""``mimlsort cameras``: the cameras each vendor backend can open on this machine.

Nothing is broadcast on the network unless ``--network`` is given: Basler lists its USB3 transport
layer and the pylon emulator (through its own transport layer, ``BaslerCamEmu``); GigE discovery
sends broadcast packets on every interface, so it only runs on request. GenICam lists what the
GenTL producers report (``--cti``, else ``GENICAM_GENTL64_PATH``, else ``viky.cti`` from the
genicam wheel). A backend whose SDK is missing prints one line saying what to install.
"""

from __future__ import annotations

import argparse

VENDOR_BACKENDS = ("basler", "genicam", "ximea")


def _list(backend: str, args: argparse.Namespace):
    if backend == "basler":
        from acquisition.basler import list_devices

        return list_devices(network=args.network, emulator=not args.no_emulator)
    if backend == "genicam":
        from acquisition.genicam import list_devices

        return list_devices(cti=args.cti or "")
    from acquisition.ximea import list_devices

    return list_devices()


def cmd_cameras(args: argparse.Namespace) -> int:
    from mimlsort.errors import BackendUnavailable, ConfigError, DeviceError

    backends = [args.backend] if args.backend else list(VENDOR_BACKENDS)
    found = 0
    for backend in backends:
        try:
            devices = _list(backend, args)
        except BackendUnavailable as e:
            print(f"{backend:8s} not available: {e}")
            continue
        except DeviceError as e:
            print(f"{backend:8s} error: {e}")
            continue
        except ConfigError as e:
            if e.key != "GENICAM_GENTL64_PATH":  # --cti: the user's own option, refused as such
                from app.config import located

                # named by the option typed, not the configuration key no file here set
                raise located(e, None, {"camera.genicam.cti": "--cti"}) from e
            print(f"{backend:8s} error: {e}")  # the environment's: the other backends still list
            continue
        if not devices:
            print(f"{backend:8s} no devices" + ("" if args.network or backend != "basler" else " (GigE not searched: --network)"))
        for d in devices:
            found += 1
            name = f" '{d.user_name}'" if d.user_name else ""
            print(f"{backend:8s} serial={d.serial:<14s} {d.model}{name}  [{d.transport}] {d.note}".rstrip())
    return 0 if found or args.backend is None else 1


def register(subparsers) -> None:
    sp = subparsers.add_parser("cameras", help="list the cameras each vendor backend can open (no network broadcast by default)")
    sp.add_argument("--backend", choices=VENDOR_BACKENDS, help="only this backend")
    sp.add_argument("--network", action="store_true", help="also search GigE cameras (broadcasts on every interface)")
    sp.add_argument("--cti", help="GenTL producer (.cti) for the genicam backend")
    sp.add_argument("--no-emulator", action="store_true", help="do not list the pylon camera emulator")
    sp.set_defaults(func=cmd_cameras)

"""`fim image new` and `fim image info`: make a single-file image from DwarFS layers, look
into one. Images for users come from `fim build`; these are the developer's entry."""

from __future__ import annotations

import argparse
import json

from fim.cli.tool import size_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fim image new|info`."""
    p = subparsers.add_parser("image", help="make or inspect a single-file image",
                              description="Make or inspect a single-file image.")
    commands = p.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    new = commands.add_parser(
        "new", help="write an image with the current fim and the given layers",
        description="Write an executable image OUTPUT: launcher, this fim's code, a zeroed "
        "reserved space (the default configuration) and the DwarFS LAYERs, base first.")
    new.add_argument("output", metavar="OUTPUT")
    new.add_argument("--layer", action="append", default=[], metavar="LAYER",
                     help="a DwarFS image (from `fim create`); repeat for more layers")
    new.add_argument("--reserved-size", type=size_arg, default="4m", metavar="SIZE",
                     help="bytes for the configuration, a multiple of 4k (default 4m)")
    new.add_argument("--dist", default="ROOTFS", type=str.upper,
                     help="FIM_DIST of the image (default ROOTFS)")
    new.set_defaults(func=_new)
    info = commands.add_parser("info", help="print where the parts of an image are, as JSON",
                               description="Print the layout, layers and configuration "
                               "of IMAGE as JSON.")
    info.add_argument("image", metavar="IMAGE")
    info.set_defaults(func=_info)


def _new(args: argparse.Namespace) -> int:
    from fim.app import image
    from fim.cli.build import payload

    rt = payload.build()
    image.create(args.output, rt.launcher, rt.payload, reserved_size=args.reserved_size,
                 layers=args.layer, dist=args.dist)
    return 0


def _info(args: argparse.Namespace) -> int:
    from fim.app import config, image

    layout = image.read_layout(args.image)
    cfg = config.load(layout)
    print(json.dumps({
        **layout.as_dict(),
        "config": cfg.to_json(),
        "config_capacity": config.slot_capacity(layout),
        "layers": [{"offset": la.offset, "size": la.size} for la in image.list_layers(layout)],
    }, indent=2, sort_keys=True))
    return 0

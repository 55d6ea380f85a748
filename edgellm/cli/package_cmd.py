"""``edgellm package BUNDLE --target android|ios|linux``: the bundle laid out for an app."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgellm.cli.common import print_json, size_arg
from edgellm.units import fmt_bytes

HELP = """Lay a checked bundle out for an app platform, with a note (INTEGRATION.md) that names this
package's files, and a download index (index.json: names, sizes, sha256, URLs) for apps that
download the model on first launch.

--target android: an app module's assets (small models) or Play Asset Delivery asset pack modules
  (--delivery install-time, fast-follow or on-demand); Google Play's size limits are checked and
  a build too big for the chosen delivery is an error naming the limit and the size.
--target ios: a folder an Xcode target adds as a folder reference; when the plan's peak memory is
  above what iOS lets an app use by default on the bundle's device, the note says to add the
  increased-memory-limit entitlement, with the numbers.
--target linux: a tarball with the bundle, run.sh and the light runtime's install line.
--delivery download (android, ios): nothing embedded; the files to upload and the index.
--split SIZE: GGUF parts of at most SIZE in llama.cpp's own split format (llama.cpp loads the
  first part and finds the rest), for hosts or asset packs with a per-file limit.

examples:
  edgellm package ./qwen-rpi5 --target linux
  edgellm package ./qwen-phone --target android --delivery install-time
  edgellm package ./qwen-phone --target ios --base-url https://cdn.example.com/qwen --split 500MB
"""


def add_parser(sub) -> None:
    p = sub.add_parser("package", help="lay a bundle out for an Android, iOS or Linux app", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder written by `edgellm export`")
    p.add_argument("--target", required=True, choices=("android", "ios", "linux"))
    p.add_argument("-o", "--output", type=Path, help="package folder (default: BUNDLE-TARGET)")
    p.add_argument("--delivery", default="auto",
                   help="android: auto (default), base, install-time, fast-follow, on-demand, download; "
                        "ios: auto, bundled, download")
    p.add_argument("--base-url", default="", metavar="URL", help="where the files will be hosted (index.json URLs)")
    p.add_argument("--split", type=size_arg, metavar="SIZE", help="split the GGUF into parts of at most SIZE")
    p.add_argument("--force", action="store_true", help="replace an existing package folder")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgellm.packaging import PackageRequest, package

    r = package(PackageRequest(Path(args.bundle), args.target, args.output, args.base_url, args.split,
                               args.delivery, args.force))
    if args.json:
        print_json({"package": str(r.folder), "target": args.target, "delivery": r.delivery,
                    "total_bytes": r.total_bytes, "files": r.files})
        return 0
    print(f"wrote {r.folder}/ ({args.target}, {r.delivery}: {len(r.files)} files, {fmt_bytes(r.total_bytes)}); "
          f"see {r.folder}/INTEGRATION.md")
    return 0

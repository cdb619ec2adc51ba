"""Expose Debian's bcc module, and only it, to the running interpreter's environment.

bcc is not published on PyPI: Debian ships it in dist-packages. Adding the whole
dist-packages directory to a virtualenv would pull in every Debian Python package,
so this writes a .pth that points at a directory holding a single symlink to bcc.
"""

import pathlib
import sys
import sysconfig

DEBIAN_BCC = pathlib.Path("/usr/lib/python3/dist-packages/bcc")


def main() -> int:
    if not DEBIAN_BCC.is_dir():
        print(f"link_bcc: {DEBIAN_BCC} is missing: install python3-bpfcc", file=sys.stderr)
        return 1
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    only_bcc = pathlib.Path(sys.prefix) / "debian-bcc"
    only_bcc.mkdir(exist_ok=True)
    link = only_bcc / "bcc"
    if not link.is_symlink():
        link.symlink_to(DEBIAN_BCC)
    (site / "seawall-debian-bcc.pth").write_text(f"{only_bcc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

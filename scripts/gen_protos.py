"""Generate the Python stubs of proto/tessera/v1/*.proto into the tessera.proto package.

    python scripts/gen_protos.py           # regenerate
    python scripts/gen_protos.py --check   # exit 1 if the committed stubs are stale (CI)

The .proto files live in proto/tessera/v1/ and are compiled with proto/ as the include root, so
descriptors keep their canonical names (tessera/v1/feature_store.proto, which reflection shows).
protoc writes imports as `tessera.v1`; they are rewritten to `tessera.proto.v1`, the installed
package (pyproject maps tessera.proto to proto/tessera).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_DIR = PROTO_ROOT / "tessera" / "v1"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(into: Path) -> list[Path]:
    from grpc_tools import protoc  # dev dependency

    sources = sorted((PROTO_ROOT / "tessera" / "v1").glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={into}",
        f"--pyi_out={into}",
        f"--grpc_python_out={into}",
        *[str(s) for s in sources],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    outputs = sorted(p for p in (into / "tessera" / "v1").iterdir() if p.name.endswith(SUFFIXES))
    for path in outputs:
        text = path.read_text()
        text = re.sub(r"\bfrom tessera\.v1 import\b", "from tessera.proto.v1 import", text)
        path.write_text(text)
    return outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        outputs = generate(Path(tmp))
        stale = []
        for path in outputs:
            target = OUT_DIR / path.name
            if args.check:
                if not target.exists() or target.read_text() != path.read_text():
                    stale.append(target.relative_to(ROOT))
            else:
                shutil.copyfile(path, target)
        if args.check and stale:
            print("stale protobuf stubs (run: python scripts/gen_protos.py):", *stale, sep="\n  ")
            return 1
    where = OUT_DIR.relative_to(ROOT)
    print("protobuf stubs", "up to date" if args.check else f"written to {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

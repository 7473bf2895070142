"""A model release that is faulty in service only: it is the given model, except that
`POISON` (NaN, or a number such as 2, which pushes probabilities out of 0..1) is added to
every output when the frames' mean brightness is below THRESHOLD. Its self-test (a white
frame, which this script also writes) passes; a real scan (dark, like every ultrasound
frame) gets wrong outputs. tests/tests/model_faults.rs publishes it to test the agent's
rollback in service.

    python faulty_when_dark.py <model.onnx> <out.onnx> <white.png> [POISON, default nan]

The sidecar beside <model.onnx> is copied beside <out.onnx> with the new file's SHA-256.
"""
import hashlib
import json
import struct
import sys
import zlib
from pathlib import Path

import onnx
from onnx import TensorProto, helper

THRESHOLD = 128.0


def white_png(path: str, size: int = 192) -> None:
    raw = b"".join(b"\x00" + b"\xff" * size for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def main() -> None:
    src, out, png = sys.argv[1:4]
    poison = float(sys.argv[4]) if len(sys.argv) > 4 else float("nan")
    m = onnx.load(src)
    g = m.graph
    frames = g.input[0].name
    g.initializer.extend([
        helper.make_tensor("trap_threshold", TensorProto.FLOAT, [], [THRESHOLD]),
        helper.make_tensor("trap_value", TensorProto.FLOAT, [], [poison]),
        helper.make_tensor("trap_zero", TensorProto.FLOAT, [], [0.0]),
    ])
    # The poison below the threshold, 0 above: a Where on the input, which no engine can fold
    # away (x * 0 can be).
    g.node.extend([
        helper.make_node("ReduceMean", [frames], ["trap_mean"], keepdims=0),
        helper.make_node("Less", ["trap_mean", "trap_threshold"], ["trap_dark"]),
        helper.make_node("Where", ["trap_dark", "trap_value", "trap_zero"], ["trap_poison"]),
    ])
    for o in g.output:
        raw = o.name + "_before_trap"
        for n in g.node:
            n.output[:] = [raw if x == o.name else x for x in n.output]
            if n.op_type != "Add" or "trap_poison" not in n.input:
                n.input[:] = [raw if x == o.name else x for x in n.input]
        g.node.append(helper.make_node("Add", [raw, "trap_poison"], [o.name]))
    onnx.checker.check_model(m)
    onnx.save(m, out)
    side = json.loads(Path(src).with_suffix(".json").read_text())
    side["sha256"] = hashlib.sha256(Path(out).read_bytes()).hexdigest()
    Path(out).with_suffix(".json").write_text(json.dumps(side, indent=1))
    white_png(png)


if __name__ == "__main__":
    main()

"""The generated gRPC modules match serve/protos/dafnck.proto byte for byte, and every rpc
has an ingress method of its name (what Serve's gRPC proxy calls)."""

from __future__ import annotations

from pathlib import Path

import pytest
from grpc_tools import protoc

from serve.grpc_api import SERVICER_FUNCTIONS, GrpcApi
from serve.protos import dafnck_pb2

REPO = Path(__file__).resolve().parents[3]
PROTO = "serve/protos/dafnck.proto"
GENERATED = ["dafnck_pb2.py", "dafnck_pb2.pyi", "dafnck_pb2_grpc.py"]


def test_generated_code_is_in_sync_with_the_proto(tmp_path: Path) -> None:
    args = ["protoc", f"-I{REPO}", f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}", str(REPO / PROTO)]  # fmt: skip
    assert protoc.main(args) == 0
    for name in GENERATED:
        fresh = (tmp_path / "serve" / "protos" / name).read_bytes()
        kept = (REPO / "serve" / "protos" / name).read_bytes()
        assert fresh == kept, (
            f"serve/protos/{name} is stale: regenerate it from {PROTO} "
            "(the command is at the top of the .proto)"
        )


@pytest.mark.parametrize("service", ["Orchestration", "Workflows"])
def test_every_rpc_has_an_ingress_method(service: str) -> None:
    methods = dafnck_pb2.DESCRIPTOR.services_by_name[service].methods
    assert methods
    missing = [m.name for m in methods if not callable(getattr(GrpcApi, m.name, None))]
    assert not missing
    assert any(f.endswith(f"add_{service}Servicer_to_server") for f in SERVICER_FUNCTIONS)

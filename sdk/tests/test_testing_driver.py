"""The test driver answers as OpenBao 2.7 does: host sentinels, and existence-check errors."""

from __future__ import annotations

import pytest

from vault_plugin_sdk.plugin.pb import backend_pb2 as pb
from vault_plugin_sdk.testing import existence_outcome, host_outcome


def reply_with(err_type: int, message: str, code: int = 0) -> pb.HandleRequestReply:
    return pb.HandleRequestReply(
        err=pb.ProtoError(err_type=err_type, err_msg=message, err_code=code)
    )


@pytest.mark.parametrize(
    ("err_type", "status", "text"),
    [
        (5, 405, "unsupported operation"),
        (6, 404, "unsupported path"),
        (7, 400, "invalid request"),
        (8, 403, "permission denied"),
    ],
)
def test_host_sentinels_replace_the_plugin_text(err_type: int, status: int, text: str) -> None:
    """Measured on OpenBao 2.7.2 for 5 and 6 (tests/e2e/test_sdk_e2e.py::test_error_codes);
    OpenBao's ProtoErrToErr does the same for 7 and 8."""
    outcome = host_outcome("read", reply_with(err_type, "the plugin's own words"))
    assert outcome.status == status
    assert outcome.errors == [f"1 error occurred:\n\t* {text}\n\n"]


def test_unknown_type_keeps_its_text_wrapped_and_is_500() -> None:
    outcome = host_outcome("update", reply_with(0, "cannot write to readonly storage"))
    assert outcome.status == 500
    assert outcome.errors == ["1 error occurred:\n\t* cannot write to readonly storage\n\n"]


def test_coded_and_bad_request_keep_their_text() -> None:
    assert host_outcome("read", reply_with(3, "gone", 410)).status == 410
    assert host_outcome("read", reply_with(3, "gone", 410)).errors == ["gone"]
    assert host_outcome("read", reply_with(4, "bad")).errors == ["bad"]


def test_existence_check_errors() -> None:
    def check(err_type: int) -> pb.HandleExistenceCheckReply:
        return pb.HandleExistenceCheckReply(err=pb.ProtoError(err_type=err_type, err_msg="x"))

    assert existence_outcome(check(6)) == "update"  # "no check": the write goes on
    internal = existence_outcome(check(2))
    assert not isinstance(internal, str)
    assert (internal.status, internal.errors) == (500, ["internal error"])
    coded = existence_outcome(check(3))
    assert not isinstance(coded, str)
    assert (coded.status, coded.errors) == (500, ["internal error"])
    assert existence_outcome(pb.HandleExistenceCheckReply(check_found=True)) == "create"
    found = pb.HandleExistenceCheckReply(check_found=True, exists=True)
    assert existence_outcome(found) == "update"
    assert existence_outcome(pb.HandleExistenceCheckReply()) == "update"

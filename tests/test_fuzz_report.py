"""tools.fuzz_report keeps what identifies a failed case (the long profile's seed is random)."""

from __future__ import annotations

from tools.fuzz_report import failure_lines

OUTPUT = """\
tests/fuzz/harness.py:166: in verdict
    survey = os.environ.get("OPTGEN_FUZZ_SURVEY")
E           AssertionError: triton step_multi: adabelief: unclear refusal: "ValueError: x"
E           Failing test case: test_triton_step_multi(
E               drawn=(Case(where='adabelief',
E           You can reproduce this test case by temporarily adding \
@reproduce_failure('6.170.15', b'AXic') as a decorator on your test function
E           ValueError: adamw: grads[1] is not a tensor
E               must_refuse=False,
FAILED tests/fuzz/test_fuzz_triton.py::test_triton_step_multi - AssertionErro...
4 failed, 48 passed in 232.81s (0:03:52)
"""


def test_failure_lines_keep_each_cases_error_blob_and_failed_line():
    lines = failure_lines(OUTPUT)
    assert lines == [
        OUTPUT.splitlines()[2],
        OUTPUT.splitlines()[5],
        OUTPUT.splitlines()[6],
        OUTPUT.splitlines()[8],
    ]
    assert "reproduce_failure('6.170.15', b'AXic')" in lines[1]

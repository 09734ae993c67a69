"""Verifiers: does a teacher's answer deserve to train the student? (Rejection sampling, as in DeepSeek-R1:
only verified answers are kept.)

Each verifier is a pure function of the answer (plus the prompt's reference data) returning a `Verdict`:
`answer_match` (final answer vs. reference), `python_tests` (code run against tests in a sandbox),
`json_schema` (JSON valid under a schema) and `judge` (a judge model's score against a rubric). `VERIFIERS`
names them for configs; `verifier_from_config` validates `{"name": ..., **options}`.
"""

from kdistill.verify.answer_match import answer_match, extract_answer
from kdistill.verify.json_schema import json_schema
from kdistill.verify.judge import judge
from kdistill.verify.python_tests import python_tests
from kdistill.verify.registry import VERIFIERS, VerifierSpec, verifier_from_config
from kdistill.verify.verdict import Verdict

__all__ = [
    "VERIFIERS",
    "Verdict",
    "VerifierSpec",
    "answer_match",
    "extract_answer",
    "json_schema",
    "judge",
    "python_tests",
    "verifier_from_config",
]

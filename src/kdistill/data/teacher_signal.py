"""Kept for code written against the earlier layout: the teacher-signal store is `kdistill.lm.signal_store`."""

from kdistill.lm.signal_store import TeacherSignal, TeacherSignalError, TeacherSignalWriter

__all__ = ["TeacherSignal", "TeacherSignalError", "TeacherSignalWriter"]

"""Teachers: one interface for a model seen whole (`WhiteBoxTeacher`) and one seen only through its answers
(`BlackBoxTeacher`), their building from a recipe, remote services and serving, and supervised teacher training."""
from __future__ import annotations

import torch.nn as nn

from dfkd.errors import DfkdError
from dfkd.teachers.black_box import (ACCESS_LEVELS, BlackBoxTeacher, QueryBudgetSpent, TeacherServiceError,
                                     access_rank, logits_from_answers)
from dfkd.teachers.white_box import WhiteBoxTeacher

Teacher = WhiteBoxTeacher | BlackBoxTeacher


def as_teacher(teacher) -> Teacher:
    """`teacher` behind the teacher interface: a teacher as it is, a network as a frozen white box."""
    if isinstance(teacher, (WhiteBoxTeacher, BlackBoxTeacher)):
        return teacher
    if isinstance(teacher, nn.Module):
        return WhiteBoxTeacher(teacher)
    raise DfkdError(f"a teacher is a torch.nn.Module or a BlackBoxTeacher, not {type(teacher).__name__}")


__all__ = ["ACCESS_LEVELS", "BlackBoxTeacher", "QueryBudgetSpent", "Teacher", "TeacherServiceError",
           "WhiteBoxTeacher", "access_rank", "as_teacher", "logits_from_answers"]

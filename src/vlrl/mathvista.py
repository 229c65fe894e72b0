"""MathVista's item vocabulary: its question and answer types and the fields the answer checks read.

Owned here, apart from :mod:`vlrl.answers` (how answers are judged) and :mod:`vlrl.data.schema` (the
column types), so that the data stage and the scorer share the words without depending on each
other's code. Values as in ``AI4Math/MathVista`` (docs/mathvista.md).

Pure module: the standard library only.
"""

from __future__ import annotations

#: The hub's ``question_type`` values.
QUESTION_TYPES = ("free_form", "multi_choice")
#: The hub's ``answer_type`` values.
ANSWER_TYPES = ("integer", "float", "text", "list")
#: The fields of an item that the answer checks read, besides the completion text.
GOLD_FIELDS = ("answer", "question_type", "answer_type", "precision", "choices")

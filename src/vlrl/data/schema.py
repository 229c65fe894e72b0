"""Column schemas: MathVista's on the hub (what the sources yield) and ours (what the splits hold).

The hub's features are copied from the dataset card of ``AI4Math/MathVista`` (``dataset_info``; see
docs/mathvista.md). The offline generator, the local-mirror loader and the test fixtures all build
data with :data:`HUB_FEATURES`, so the one transform sees the same types whatever the source.

Split rows (``data/<profile>/splits/{train,eval}``, read by generation, scoring and training) have
:data:`SPLIT_FEATURES`: the hub's columns with ``decoded_image`` replaced by ``image`` (the processed
RGB picture, ``image_size`` x ``image_size``) and the hub's ``image`` path column renamed
``image_path``.
"""

from __future__ import annotations

from datasets import Features, Image, List, Value

#: The metadata struct, exactly as on the hub (img_height/img_width are the ORIGINAL image's size).
METADATA_FEATURES = {
    "category": Value("string"),
    "context": Value("string"),
    "grade": Value("string"),
    "img_height": Value("int64"),
    "img_width": Value("int64"),
    "language": Value("string"),
    "skills": List(Value("string")),
    "source": Value("string"),
    "split": Value("string"),
    "task": Value("string"),
}

#: ``AI4Math/MathVista`` (testmini/test) columns and types. ``answer`` is always a string,
#: ``precision`` a nullable float64, ``choices`` None for free-form questions.
HUB_FEATURES = Features({
    "pid": Value("string"),
    "question": Value("string"),
    "image": Value("string"),
    "decoded_image": Image(),
    "choices": List(Value("string")),
    "unit": Value("string"),
    "precision": Value("float64"),
    "answer": Value("string"),
    "question_type": Value("string"),
    "answer_type": Value("string"),
    "metadata": METADATA_FEATURES,
    "query": Value("string"),
})

#: Columns of both splits (train and eval).
SPLIT_FEATURES = Features({
    "pid": Value("string"),
    "question": Value("string"),
    "image": Image(),
    "image_path": Value("string"),
    "choices": List(Value("string")),
    "unit": Value("string"),
    "precision": Value("float64"),
    "answer": Value("string"),
    "question_type": Value("string"),
    "answer_type": Value("string"),
    "metadata": METADATA_FEATURES,
    "query": Value("string"),
})

#: Columns a source must have (the hub's); extra columns are ignored.
REQUIRED_SOURCE_COLUMNS = tuple(HUB_FEATURES)



def mathvista_query(question: str, question_type: str, answer_type: str, precision: float | None,
                    unit: str | None = None, choices: list[str] | None = None) -> str:
    """The ``query`` column as MathVista builds it: a hint for the answer format, then the question.

    Follows MathVista's ``build_query`` (hint wording per question/answer type, "(Unit: ...)", and
    "Choices:" lines with letters).

    >>> mathvista_query("How many circles?", "free_form", "integer", None).splitlines()[1]
    'Question: How many circles?'
    """
    if question_type == "multi_choice":
        hint = ("Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
                "at the end.")
    elif answer_type == "integer":
        hint = ("Please answer the question requiring an integer answer and provide the final value, "
                "e.g., 1, 2, 3, at the end.")
    elif answer_type == "float" and precision == 1:
        hint = ("Please answer the question requiring a floating-point number with one decimal place "
                "and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.")
    elif answer_type == "float" and precision == 2:
        hint = ("Please answer the question requiring a floating-point number with two decimal places "
                "and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.")
    elif answer_type == "list":
        hint = ("Please answer the question requiring a Python list as an answer and provide the final "
                "list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.")
    else:
        hint = "Please answer the question and provide the final answer at the end."
    text = f"Hint: {hint}\nQuestion: {question}"
    if unit:
        text += f" (Unit: {unit})"
    if choices:
        letters = "ABCDEFGHIJ"
        text += "\nChoices:\n" + "\n".join(f"({letters[i]}) {c}" for i, c in enumerate(choices))
    return text

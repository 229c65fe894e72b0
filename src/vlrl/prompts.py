"""The tags and the user turn of the reference experiment, in one place.

The user turn is the reference notebook's: the image first, then the question followed by the
instruction to reason between ``<REASONING>`` tags and answer between ``<SOLUTION>`` tags. The text
comes from ``params.yaml`` (``prompt.template``) so that a prompt change is a tracked parameter.

Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

REASONING_START = "<REASONING>"
REASONING_END = "</REASONING>"
SOLUTION_START = "<SOLUTION>"
SOLUTION_END = "</SOLUTION>"

#: The four tags. Tokenizers must keep them as NON-special tokens: TRL decodes completions with
#: ``skip_special_tokens=True``, which would erase special tokens before the rewards see them.
TAGS = (REASONING_START, REASONING_END, SOLUTION_START, SOLUTION_END)


def user_text(question: str, template: str) -> str:
    """The text part of the user turn.

    >>> user_text("How many bars?", "{question}. Answer in {solution_start}...{solution_end}")
    'How many bars?. Answer in <SOLUTION>...</SOLUTION>'
    """
    return template.format(
        question=question,
        reasoning_start=REASONING_START,
        reasoning_end=REASONING_END,
        solution_start=SOLUTION_START,
        solution_end=SOLUTION_END,
    )


def build_prompt(question: str, template: str) -> list[dict]:
    """The conversational prompt TRL and the chat template expect: one user turn, image first.

    >>> build_prompt("2+2?", "{question} {solution_start}{solution_end}")[0]["content"][0]
    {'type': 'image'}
    """
    return [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": user_text(question, template)},
            ],
        }
    ]

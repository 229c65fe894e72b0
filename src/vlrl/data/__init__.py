"""Stage 1 (fetch): MathVista testmini (hub or local mirror) or the offline set -> splits + manifest.

Modules, one job each: :mod:`~vlrl.data.schema` (columns), :mod:`~vlrl.data.offline` (generator),
:mod:`~vlrl.data.sources` (offline / hub / local), :mod:`~vlrl.data.transform` (bad rows, numeric
filter, resize + RGB), :mod:`~vlrl.data.heldout` (the seeded held-out split), :mod:`~vlrl.data.manifest`,
:mod:`~vlrl.data.fetch` (the fetch stage's job: :func:`fetch_splits`, and :func:`load_split`).

Split row schema (train and eval; read by generation, scoring and training):

==============  ==========================  ====================================================
column          type                        meaning
==============  ==========================  ====================================================
pid             string                      MathVista problem id (unique)
question        string                      the question text
image           datasets.Image()            processed picture: RGB, image_size x image_size
image_path      string or None              the hub's original ``image`` path column
choices         list of string, or None     multiple-choice options (None when free-form)
unit            string or None              unit of the answer
precision       float64 or None             decimals for float answers (MathVista scoring)
answer          string                      gold answer, as on the hub (``float()`` parses it)
question_type   "free_form"|"multi_choice"
answer_type     "integer"|"float"|"text"|"list"
metadata        struct                      as the hub's: category, context, grade, img_height,
                                            img_width (original size), language, skills (list),
                                            source, split, task (offline set: the question kind)
query           string                      MathVista's prompt: hint + question (+ choices)
==============  ==========================  ====================================================

"""

from vlrl.data.fetch import fetch_splits, load_split

__all__ = ["fetch_splits", "load_split"]

"""SuperGLUE RTE: does the premise entail the hypothesis? (hub: super_glue/rte)

MeZO template (OPT experiments), label words Yes (entailment, 0) / No (not_entailment, 1):

    {premise}\\nDoes this mean that "{hypothesis}" is true? Yes or No?\\n{Yes|No}
"""

from tasks.base import Example, Task


class RTE(Task):
    name = "rte"
    hub_path = ("super_glue", "rte")
    required_columns = ("premise", "hypothesis", "label")
    num_labels = 2
    verbalizer = ("Yes", "No")

    def render(self, row: dict) -> Example:
        prompt = f'{row["premise"]}\nDoes this mean that "{row["hypothesis"]}" is true? Yes or No?\n'
        return Example(prompt=prompt, candidates=self.verbalizer, label=int(row["label"]))

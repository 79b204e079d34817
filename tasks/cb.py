"""SuperGLUE CommitmentBank: three-way entailment (hub: super_glue/cb)

MeZO template (OPT experiments), label words Yes (entailment, 0) / No (contradiction, 1) /
Maybe (neutral, 2):

    Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\\n{Yes|No|Maybe}
"""

from tasks.base import Example, Task


class CB(Task):
    name = "cb"
    hub_path = ("super_glue", "cb")
    required_columns = ("premise", "hypothesis", "label")
    num_labels = 3
    verbalizer = ("Yes", "No", "Maybe")

    def render(self, row: dict) -> Example:
        prompt = f'Suppose {row["premise"]} Can we infer that "{row["hypothesis"]}"? Yes, No, or Maybe?\n'
        return Example(prompt=prompt, candidates=self.verbalizer, label=int(row["label"]))

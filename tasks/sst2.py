"""GLUE SST-2: binary sentiment. Template and label words of the MeZO paper (OPT setting)."""

from tasks.base import Example, Task


class SST2(Task):
    name = "sst2"
    hub_path = ("glue", "sst2")
    required_columns = ("sentence", "label")
    num_labels = 2
    verbalizer = (" terrible", " great")

    def render(self, row: dict) -> Example:
        return Example(prompt=f"{row['sentence'].strip()} It was", candidates=self.verbalizer,
                       label=int(row["label"]))

"""SuperGLUE WiC: is a word used with the same sense in two sentences? (hub: super_glue/wic)

MeZO template (OPT experiments), label words No (different sense, 0) / Yes (same sense, 1):

    Does the word "{word}" have the same meaning in these two sentences? Yes, No?\\n{sentence1}\\n{sentence2}\\n{No|Yes}
"""

from tasks.base import Example, Task


class WiC(Task):
    name = "wic"
    hub_path = ("super_glue", "wic")
    required_columns = ("word", "sentence1", "sentence2", "label")
    num_labels = 2
    verbalizer = ("No", "Yes")

    def render(self, row: dict) -> Example:
        prompt = (f'Does the word "{row["word"]}" have the same meaning in these two sentences? Yes, No?\n'
                  f'{row["sentence1"]}\n{row["sentence2"]}\n')
        return Example(prompt=prompt, candidates=self.verbalizer, label=int(row["label"]))

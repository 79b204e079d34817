"""SuperGLUE WSC: does the pronoun refer to the noun phrase? (hub: super_glue/wsc.fixed)

MeZO template (OPT experiments), label words No (0) / Yes (1); the pronoun is lower-cased:

    {text}\\nIn the previous sentence, does the pronoun "{span2_text}" refer to {span1_text}? Yes or No?\\n{No|Yes}
"""

from tasks.base import Example, Task


class WSC(Task):
    name = "wsc"
    hub_path = ("super_glue", "wsc.fixed")
    required_columns = ("text", "span1_text", "span2_text", "label")
    num_labels = 2
    verbalizer = ("No", "Yes")

    def render(self, row: dict) -> Example:
        prompt = (f'{row["text"]}\nIn the previous sentence, does the pronoun "{row["span2_text"].lower()}" '
                  f'refer to {row["span1_text"]}? Yes or No?\n')
        return Example(prompt=prompt, candidates=self.verbalizer, label=int(row["label"]))

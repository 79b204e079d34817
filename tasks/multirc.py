"""SuperGLUE MultiRC: is a candidate answer to a question about a paragraph correct? (hub: super_glue/multirc)

MeZO template (OPT experiments), label words No (0) / Yes (1); scored by accuracy over
(question, answer) pairs as in the MeZO paper:

    {paragraph}\\nQuestion: {question}\\nI found this answer "{answer}". Is that correct? Yes or No?\\n{No|Yes}
"""

from tasks.base import Example, Task


class MultiRC(Task):
    name = "multirc"
    hub_path = ("super_glue", "multirc")
    required_columns = ("paragraph", "question", "answer", "label")
    num_labels = 2
    verbalizer = ("No", "Yes")

    def render(self, row: dict) -> Example:
        prompt = (f'{row["paragraph"]}\nQuestion: {row["question"]}\n'
                  f'I found this answer "{row["answer"]}". Is that correct? Yes or No?\n')
        return Example(prompt=prompt, candidates=self.verbalizer, label=int(row["label"]))

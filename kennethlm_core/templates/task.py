import math

from kennethlm_core import hookimpl
from kennethlm_core.components import Metric, Task, TaskResult

SENTENCES = (
    "Det regner i København, og cyklerne holder for rødt.",
    "Bageren på hjørnet sælger rugbrød og wienerbrød hver morgen.",
    "Færgen til Ærø sejler to gange om dagen.",
    "Hun læste avisen, mens kaffen blev kold.",
)


class Starter(Task):
    name = "$name"

    def measure(self, lm, *, data=None, limit=None):
        sentences = SENTENCES[:limit] if limit else SENTENCES
        bits = [-lm.score("", s) / math.log(2) for s in sentences]  # score() is in nats
        nbytes = sum(len(s.encode("utf-8")) for s in sentences)
        metrics = {"bpb": Metric(sum(bits) / nbytes, chance=None, higher_is_better=False)}
        return TaskResult(metrics, n=len(sentences), notes="built-in sentences")


@hookimpl
def klm_register_task(register):
    register(
        "$name",
        lambda cfg: Starter(),
        "$summary",
    )

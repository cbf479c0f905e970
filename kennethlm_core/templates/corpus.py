import random

from kennethlm_core import hookimpl
from kennethlm_core.components import Corpus, Document

NUMBERS = (
    "nul en to tre fire fem seks syv otte ni ti elleve tolv tretten fjorten femten seksten "
    "sytten atten nitten tyve"
).split()


class Starter(Corpus):
    """Each document counts in Danish from a random number; two domains, up and down."""

    name = "$name"

    def __init__(self, n_docs):
        self.n_docs = n_docs

    def documents(self):
        rng = random.Random(0)  # the same documents every time
        for i in range(self.n_docs):
            start = rng.randrange(len(NUMBERS))
            up = i % 2 == 0
            words = NUMBERS[start:] if up else NUMBERS[start::-1]
            text = "Vi tæller: " + ", ".join(words) + ".\n"
            domain = "op" if up else "ned"
            yield Document(f"$name-{i}", text, domain)

    def fingerprint(self):
        return f"$name-v1-{self.n_docs}"


def make(cfg):
    return Starter(cfg.get("${ident}_docs"))


@hookimpl
def klm_register_corpus(register):
    register(
        "$name",
        make,
        "$summary",
        # a setting of its own, with its default: --set ${ident}_docs=500
        options={"${ident}_docs": 2000},
    )

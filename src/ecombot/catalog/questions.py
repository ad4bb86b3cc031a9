"""Support questions about products, made from the catalog with known answers. A support run trained with
`--catalog` learns to answer them from the product's passage, which the catalog puts in the knowledge base
(catalog/knowledge.py): without them the adapter had never read a product passage, and with the catalog added it
stated the product's price for 4% of such questions and its care for none (README, "Product questions in support").

At most one question per product (a seeded sample of the products, up to QUESTIONS_PER_CONVERSATION per
conversation of the store's data, which stays the bulk of training), of a kind it has a value for (its dimensions,
material, care or price), asked in one of several ways; the answer states the value. They split on their own beside
the data (data.prepare), so the held-out ones ask about products the run never trained on. Their category marks
them (PRODUCT_QUESTIONS): their pairs do not join the knowledge base as Q&A pairs, because another product's pair
("What is the oak stool made of?") would be found for a question about a product it does not describe (the
product's passage is the source), and none is trained without passages (train/grounding.py)."""

from __future__ import annotations

import random
from collections import Counter

from ecombot.catalog.product import Product
from ecombot.data import Conversation

PRODUCT_QUESTIONS = "ecombot:product-question"  # the category of the conversations made here (no store's own)
QUESTIONS_PER_CONVERSATION = 0.25

# kind -> (ways a customer asks, the answer, the product's value: "" where it has none). The later ways are the loose
# ones customers type; asked only the first three, a 100-step adapter answered 73% of questions in wordings it never
# saw (benchmarks/product_questions.py --wording own) against 96% in its own, handing 20% over.
KINDS = {
    "dimensions": (("What are the dimensions of the {title}?", "How big is the {title}?",
                    "What size is the {title}, exactly?", "what are the measurements of the {title}",
                    "{title} dimensions?", "how much space does the {title} take up"),
                   "The {title} measures {value}.", lambda p: p.attribute("dimensions")),
    "material": (("What is the {title} made of?", "Which material is the {title}?",
                  "Tell me what the {title} is made from.", "what material is the {title}", "{title} material?",
                  "what is the {title} built from"),
                 "The {title} is made of {value}.", lambda p: p.attribute("material")),
    "care": (("How should I clean the {title}?", "How do I look after the {title}?",
              "What are the care instructions for the {title}?", "how do i wash the {title}",
              "{title} care instructions?", "is the {title} easy to clean"),
             "Care for the {title}: {value}", lambda p: p.attribute("care")),
    "price": (("How much does the {title} cost?", "What is the price of the {title}?",
               "How much is the {title}?", "what's the price on the {title}", "{title} cost?",
               "how much do you charge for the {title}"),
              "The {title} costs ${value}.", lambda p: f"{p.price:.2f}"),
}
LOWER_CASE_SHARE = 0.5  # questions with the title typed in lower case, as customers do (the answer keeps the catalog's)


def product_questions(products: list[Product], limit: int, seed: int) -> list[Conversation]:
    """One question for each of at most `limit` products (a seeded sample), the kinds taken in turn among those the
    product has a value for (every product has a price), each asked one of its ways. Products sharing a title are
    left out: the same question would have two answers."""
    rng, case_rng = random.Random(seed), random.Random(f"{seed}-case")
    titles = Counter(p.title.casefold() for p in products)
    distinct = [p for p in products if titles[p.title.casefold()] == 1]
    made = []
    for n, product in enumerate(rng.sample(distinct, min(limit, len(distinct)))):
        kinds = [k for k, (_, _, value) in KINDS.items() if value(product)]
        kind = kinds[n % len(kinds)]
        asks, answer, value = KINDS[kind]
        title = product.title
        made.append(Conversation(
            messages=[{"role": "user", "content": rng.choice(asks).format(
                title=title.lower() if case_rng.random() < LOWER_CASE_SHARE else title)},
                      {"role": "assistant", "content": answer.format(title=title, value=value(product))}],
            intent=f"product_{kind}", category=PRODUCT_QUESTIONS, source=f"catalog: {product.sku}"))
    return made

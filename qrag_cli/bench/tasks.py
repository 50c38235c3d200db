"""Generated multi-hop tasks (seeded), written as training JSONL examples."""

from __future__ import annotations

import random

from qrag_cli.datasets import Example

NAMES = (
    "Ada Bram Cleo Dag Edda Finn Greta Hugo Ines Jon Kaja Leif Mira Nils Olga Per Rut "
    "Sten Tova Ulf Vera Wim Yrsa Zeno Alva Bo Cora Dino Elin Frej Gull Hans Ivo Jana "
    "Kurt Lina Max Nora Otto Pia"
).split()
OBJECTS = "key ring letter coin map watch knife lamp book flute".split()
CONTAINERS = (
    "red box|blue box|green chest|black trunk|white crate|grey bag|brown basket|"
    "silver case|golden jar|yellow tin|orange sack|purple drawer"
).split("|")
ROOMS = (
    "attic cellar kitchen garage library pantry study hallway bedroom barn workshop greenhouse"
).split()


def two_hop_example(rng: random.Random, idx: int, n_people: int = 4) -> Example:
    """ "Which room holds <person>'s <object>?" needs two facts that connect only via a
    container: <person> put the <object> in the <container>; the <container> is in the
    <room>. The question never names the container, so a single retrieval step cannot
    find the second fact; distractors use the same templates."""
    people = rng.sample(NAMES, n_people)
    containers = rng.sample(CONTAINERS, 2 * n_people)
    rooms = [rng.choice(ROOMS) for _ in containers]
    chunks: list[str] = []
    support: list[int] = []
    target, obj = people[0], rng.choice(OBJECTS)
    used = 0
    for p, person in enumerate(people):
        for k, thing in enumerate(
            rng.sample(OBJECTS, 2) if p else [obj, rng.choice([o for o in OBJECTS if o != obj])]
        ):
            c = containers[used]
            used += 1
            if p == 0 and k == 0:
                support.append(len(chunks))
                gold_container = c
            chunks.append(f"{person} put the {thing} in the {c}.")
    for c, room in zip(containers, rooms, strict=True):
        if c == gold_container:
            support.append(len(chunks))
            answer = room
        chunks.append(f"The {c} is kept in the {room}.")
    order = list(range(len(chunks)))
    rng.shuffle(order)
    shuffled = [chunks[i] for i in order]
    new_support = sorted(order.index(i) for i in support)
    return Example(
        id=f"twohop-{idx}",
        question=f"In which room is {target}'s {obj}?",
        chunks=tuple(shuffled),
        support=tuple(new_support),
        answer=answer,
    )


def two_hop_task(n: int, seed: int, n_people: int = 4) -> list[Example]:
    rng = random.Random(seed)
    return [two_hop_example(rng, i, n_people) for i in range(n)]

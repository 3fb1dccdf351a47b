"""The edge where an `Experiment` meets its data: what the run takes from its registered
mixtures (BTMLM's target languages, its length factors) is filled in here, once, before
anything is built. `build_train_step` and everything below it read no data and no gin.

    exp = resolve(Experiment.from_gin())   # train and compile call this; nothing else does
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Dict, List, Mapping, Set, Tuple

import seqio

from ernie_m_jax.configs import BTMLMConfig
from ernie_m_jax.data import languages, pipeline
from ernie_m_jax.train.config import Experiment


def resolve(exp: Experiment, read_data: bool = True) -> Experiment:
    """`exp` with everything it takes from its mixtures filled in (`resolved_btmlm`); the
    mixtures must be registered. Resolving twice changes nothing."""
    return dataclasses.replace(exp, btmlm=resolved_btmlm(exp, read_data))


def mixture_languages(mixture: str) -> Dict[str, str]:
    """{language: task} of a monolingual mixture's `<collection>.mono.<lang>` tasks."""
    return {t.name.rsplit(".", 1)[-1]: t.name for t in pipeline.tasks_of(mixture)}


def pair_tasks(mixture: str) -> List[Tuple[seqio.Task, str, str]]:
    """(task, source language, target language) of a pair mixture's
    `<collection>.para.<source>_<target>` tasks."""
    known = languages.registered_languages()
    found = []
    for task in pipeline.tasks_of(mixture):
        suffix = task.name.rsplit(".", 1)[-1]
        pairs = [(a, b) for a in known for b in known if f"{a}_{b}" == suffix]
        if len(pairs) != 1:
            raise ValueError(f"pair task {task.name}: its suffix {suffix!r} does not name one "
                             f"pair of registered languages {sorted(known)}")
        found.append((task, *pairs[0]))
    return found


def pair_mixture_languages(mixture: str) -> Set[str]:
    """The languages of a pair mixture's `<collection>.para.<source>_<target>` tasks."""
    return {lang for _, *pair in pair_tasks(mixture) for lang in pair}


def pair_length_factors(mixture: str, max_examples: int = 2000) -> Dict[str, float]:
    """{language: pieces per piece of the mixture's pivot language}, from the first
    `max_examples` training pairs of each of the pair mixture's tasks: target pieces over
    source pieces (ratio of the sums). The pivot, with factor 1, is the language most tasks
    share (English in English-centred data); a pair whose languages both lack a factor yet
    is measured after the others, and one joined to no other is an error."""
    ratios: Dict[Tuple[str, str], float] = {}
    for task, source, target in pair_tasks(mixture):
        totals = [0, 0]
        for example in task.get_dataset(None, split="train", shuffle=False).take(max_examples):
            totals[0] += int(example["source"].shape[0])
            totals[1] += int(example["target"].shape[0])
        if not all(totals):
            raise ValueError(f"pair task {task.name} has no training pieces to measure "
                             f"lengths on")
        ratios[(source, target)] = totals[1] / totals[0]
    counts = collections.Counter(lang for pair in ratios for lang in pair)
    factors = {max(sorted(counts), key=counts.get): 1.0}
    pending = dict(ratios)
    while pending:
        joined = [(pair, r) for pair, r in pending.items() if set(pair) & set(factors)]
        if not joined:
            raise ValueError(f"pair tasks {sorted(pending)} share no language with the others "
                             f"of {mixture}: their lengths cannot be put on one scale")
        for (source, target), ratio in joined:
            del pending[(source, target)]
            if source in factors:
                factors.setdefault(target, factors[source] * ratio)
            else:
                factors[source] = factors[target] / ratio
    return factors


def length_factors_by_id(factors: Mapping[str, float]) -> Tuple[float, ...]:
    """{language: factor} as `BTMLMConfig.length_factors`: indexed by language id, 1 for
    the ids between that have none."""
    by_id = {languages.language_id(lang): f for lang, f in factors.items()}
    return tuple(by_id.get(i, 1.0) for i in range(max(by_id) + 1))


def resolved_btmlm(exp: Experiment, read_data: bool = True) -> BTMLMConfig:
    """BTMLM generates into the languages of the monolingual mixture (those of the pair
    mixture too, with `parallel_targets_only`), unless configured; with
    `fit_length_factors`, the pair mixture's length ratios (`pair_length_factors`, read
    only where `read_data`: they are constants of the program, not its shape)."""
    if "btmlm" not in exp.train.enabled:
        return exp.btmlm
    btmlm = exp.btmlm
    if not btmlm.target_languages:
        codes = set(mixture_languages(exp.data.mono_mixture))
        if btmlm.parallel_targets_only:
            codes &= pair_mixture_languages(exp.data.pair_mixture)
            if len(codes) < 2:
                raise ValueError(
                    f"BTMLMConfig.parallel_targets_only leaves {sorted(codes)} as target "
                    f"languages (the languages of both {exp.data.mono_mixture} and "
                    f"{exp.data.pair_mixture}); BTMLM needs at least two to translate between")
        ids = tuple(sorted(languages.language_id(lang) for lang in codes))
        if exp.model.num_languages:
            ids = tuple(i for i in ids if i < exp.model.num_languages)
        btmlm = dataclasses.replace(btmlm, target_languages=ids)
    if btmlm.fit_length_factors and not btmlm.length_factors and read_data:
        btmlm = dataclasses.replace(btmlm, length_factors=length_factors_by_id(
            pair_length_factors(exp.data.pair_mixture)))
    return btmlm

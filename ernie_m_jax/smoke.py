"""A forward/loss smoke run: all four objectives on a built-in four-language sample.

It proves, in about a minute on a laptop CPU, that the installed package trains: the weighted
MMLM + TLM + CAMLM + BTMLM loss is minimised with AdamW on a tiny model and every objective's
loss must fall. Text is encoded as UTF-8 bytes (id = byte + 5), so no vocabulary is needed;
real runs use the SentencePiece vocabulary and seqio tasks instead.
"""

from __future__ import annotations

import functools
import time
from typing import Dict, List, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ernie_m_jax.configs import BTMLMConfig, MaskingConfig, SpecialTokens, model_config
from ernie_m_jax.model import ErnieM, init_params
from ernie_m_jax.objectives import make_objectives, weighted_loss

LANGUAGES = ("en", "de", "fr", "es")
# Written for this project: one message per row, in the four languages.
SAMPLE = (
    ("The file was saved.", "Die Datei wurde gespeichert.", "Le fichier a été enregistré.",
     "El archivo se ha guardado."),
    ("Enter your password.", "Geben Sie Ihr Passwort ein.", "Saisissez votre mot de passe.",
     "Introduzca su contraseña."),
    ("This field is required.", "Dieses Feld ist erforderlich.", "Ce champ est obligatoire.",
     "Este campo es obligatorio."),
    ("The page could not be found.", "Die Seite wurde nicht gefunden.",
     "La page est introuvable.", "No se encontró la página."),
    ("Delete the selected items?", "Ausgewählte Elemente löschen?",
     "Supprimer les éléments sélectionnés ?", "¿Eliminar los elementos seleccionados?"),
    ("Your changes have been saved.", "Ihre Änderungen wurden gespeichert.",
     "Vos modifications ont été enregistrées.", "Se han guardado sus cambios."),
    ("Search results", "Suchergebnisse", "Résultats de la recherche", "Resultados de la búsqueda"),
    ("Log out", "Abmelden", "Se déconnecter", "Cerrar sesión"),
)
TOKENS = SpecialTokens()
BYTE_OFFSET = 5
VOCAB_SIZE = 256 + BYTE_OFFSET


def encode(text: str, max_bytes: int) -> List[int]:
    data = text.encode("utf-8")
    if not data.strip():
        raise ValueError(f"empty sentence: {text!r}")
    return [b + BYTE_OFFSET for b in data[:max_bytes]]


def _pad(rows: Sequence[Sequence[int]], length: int, value: int) -> np.ndarray:
    out = np.full((len(rows), length), value, np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def build_batches(max_bytes: int = 40) -> Dict[str, Dict[str, np.ndarray]]:
    """Monolingual rows for MMLM/BTMLM and en-X pair rows for TLM/CAMLM."""
    mono_ids, mono_seg, mono_lang = [], [], []
    pair_ids, pair_seg, pair_lang = [], [], []
    for message in SAMPLE:
        encoded = [encode(text, max_bytes) for text in message]
        for lang, ids in enumerate(encoded):
            row = [TOKENS.cls_id, *ids, TOKENS.sep_id]
            mono_ids.append(row)
            mono_seg.append([1] * len(row))
            mono_lang.append([lang] * len(row))
        source = [TOKENS.cls_id, *encoded[0], TOKENS.sep_id]
        for lang in range(1, len(LANGUAGES)):
            target = [TOKENS.sep_id, *encoded[lang], TOKENS.sep_id]
            pair_ids.append(source + target)
            pair_seg.append([1] * len(source) + [2] * len(target))
            pair_lang.append([0] * len(source) + [lang] * len(target))
    mono_len, pair_len = max_bytes + 2, 2 * max_bytes + 4
    mono = dict(input_ids=_pad(mono_ids, mono_len, TOKENS.pad_id),
                segment_ids=_pad(mono_seg, mono_len, 0), language_ids=_pad(mono_lang, mono_len, 0))
    pair = dict(input_ids=_pad(pair_ids, pair_len, TOKENS.pad_id),
                segment_ids=_pad(pair_seg, pair_len, 0), language_ids=_pad(pair_lang, pair_len, 0))
    return {"mmlm": mono, "btmlm": mono, "tlm": pair, "camlm": pair}


def run(steps: int = 150, seed: int = 0, learning_rate: float = 3e-3, log_every: int = 25,
        print_fn=print) -> Dict[str, Dict[str, float]]:
    """Train the tiny model; returns {objective: {"first": loss, "last": loss}}."""
    config = model_config("tiny", vocab_size=VOCAB_SIZE, num_languages=len(LANGUAGES),
                          hidden_size=64, mlp_dim=128, dropout_rate=0.0,
                          attention_dropout_rate=0.0)
    model = ErnieM(config)
    objectives = make_objectives(
        model, TOKENS, MaskingConfig(),
        BTMLMConfig(target_languages=tuple(range(len(LANGUAGES))), max_placeholders=24))
    weights = {name: 1.0 for name in objectives}
    batches = jax.tree_util.tree_map(jnp.asarray, build_batches())
    params = nn.unbox(init_params(config, jax.random.key(seed)))["params"]
    optimizer = optax.adamw(learning_rate, eps=1e-6, weight_decay=0.01)
    opt_state = optimizer.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, rng):
        grad_fn = jax.value_and_grad(weighted_loss, has_aux=True)
        (_, metrics), grads = grad_fn(params, batches, rng, objectives, weights)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    history: Dict[str, List[float]] = {name: [] for name in objectives}
    start = time.time()
    for step in range(steps):
        params, opt_state, metrics = train_step(params, opt_state,
                                                jax.random.fold_in(jax.random.key(seed), step))
        for name in objectives:
            history[name].append(float(metrics[f"{name}/loss"]))
        if step % log_every == 0 or step == steps - 1:
            losses = "  ".join(f"{n}={history[n][-1]:.3f}" for n in objectives)
            print_fn(f"step {step:4d}  {losses}  ({time.time() - start:.1f}s)")
    window = max(1, min(10, steps // 5))
    return {name: {"first": float(np.mean(h[:window])), "last": float(np.mean(h[-window:]))}
            for name, h in history.items()}

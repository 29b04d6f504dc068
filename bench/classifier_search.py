"""One classifier experiment of the quality search in BENCHMARKS.md ("Classifier quality search").

  taskset -c 1 python bench/classifier_search.py --data sst2 --tokenizer wordpiece --vocabulary_size 16000 \
      --drop_space 1 --bucket 50 --dropout 0.3 --train_steps 1050 --eval_every 175

Built from keraslm's own pieces (tables, tokenizers, backbones, the classifier head, the optimizer)
with options keraslm-train does not have (--lower, --strip_html, --truncate, --word_dropout,
--label_smoothing, --ema, a CNN, ensembles of saved predictions), to find what pays before it
goes into keraslm. Runs on one thread (the search ran one experiment per core). Appends a row to
<--out_dir>/RESULTS.md. The search itself ran this script on a copy of keraslm taken before
batching by length and the whitespace-free WordPiece input moved into keraslm (commit 9bbf822
has both); --bucket and --drop_space are those two, done here.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
p = argparse.ArgumentParser()
p.add_argument("--data", required=True, choices=["sst2", "waimai", "imdb"])
p.add_argument("--tokenizer", default="sentencepiece")
p.add_argument("--vocabulary_size", type=int, default=8000)
p.add_argument("--model", default="lstm")  # lstm | transformer | cnn (script-only)
p.add_argument("--sequence_length", type=int, default=64)
p.add_argument("--hidden_dim", type=int, default=128)
p.add_argument("--intermediate_dim", type=int, default=0)
p.add_argument("--num_layers", type=int, default=1)
p.add_argument("--num_heads", type=int, default=4)
p.add_argument("--dropout", type=float, default=0.0)
p.add_argument("--batch_size", type=int, default=64)
p.add_argument("--train_steps", type=int, default=1000)
p.add_argument("--learning_rate", type=float, default=1e-3)
p.add_argument("--min_learning_rate", type=float, default=1e-4)
p.add_argument("--warmup_steps", type=int, default=-1)
p.add_argument("--weight_decay", type=float, default=0.1)
p.add_argument("--beta_2", type=float, default=0.99)
p.add_argument("--clip", type=float, default=1.0)
p.add_argument("--label_smoothing", type=float, default=0.0)
p.add_argument("--seed", type=int, default=1337)
p.add_argument("--eval_every", type=int, default=250)
p.add_argument("--jit", type=int, default=-1)
# script-only variants (code changes)
p.add_argument("--drop_space", type=int, default=0, help="remove whitespace-only token ids (wordpiece)")
p.add_argument("--lower", type=int, default=0)
p.add_argument("--strip_html", type=int, default=0)
p.add_argument("--word_dropout", type=float, default=0.0, help="drop whole tokens (set to PAD) during training")
p.add_argument("--spatial_dropout", type=float, default=0.0, help="SpatialDropout1D on the embeddings")
p.add_argument("--head_dropout", type=float, default=-1.0)
p.add_argument("--embed_dim", type=int, default=0)
p.add_argument("--truncate", default="head", choices=["head", "tail", "headtail"])
p.add_argument("--note", default="")
p.add_argument("--out_dir", default="/tmp/keraslm_classifier_search", help="Tokenizers, caches and RESULTS.md.")
p.add_argument("--bucket", type=int, default=0, help="length-bucketed batches: sort chunks of N batches by length, cut each batch to its longest text")
p.add_argument("--ema", type=float, default=0.0, help="AdamW use_ema with this momentum; final eval uses EMA weights")
p.add_argument("--trim", type=int, default=0, help="cut each training batch to its longest text")
args = p.parse_args()

import numpy as np
import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
import keras

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from keraslm import tables
from keraslm.config import ModelConfig, TokenizerConfig, TrainConfig
from keraslm.tokenizers import train_tokenizer, load_tokenizer
from keraslm.backbones import build_backbone
from keraslm.tasks.classifier_model import build_classifier
from keraslm.training import make_optimizer

keras.utils.set_random_seed(args.seed)
t_start = time.time()


def preprocess(texts):
    import re
    if args.strip_html:
        texts = [re.sub(r"<br\s*/?>", " ", t) for t in texts]
    if args.lower:
        texts = [t.lower() for t in texts]
    return texts


# ---------- data ----------
if args.data == "sst2":
    tr = tables.read_table(os.path.join(REPO, "data/sst2/train.tsv"), "--train_data")
    va = tables.read_table(os.path.join(REPO, "data/sst2/dev.tsv"), "--valid_data")
    names = tables.label_vocabulary(tr)
    tr_texts, va_texts = tr.texts, va.texts
    tr_y, va_y = tables.label_ids(tr, names, "t"), tables.label_ids(va, names, "v")
else:
    if args.data == "waimai":
        tab = tables.read_table(os.path.join(REPO, "data/waimai10k/waimai_10k.csv"), "--train_data")
        frac = 0.2
    else:
        tab = tables.read_table(os.path.join(REPO, "../shared/data/imdb/train.jsonl.gz"), "--train_data")
        frac = 5000 / 25000
    names = tables.label_vocabulary(tab)
    y = tables.label_ids(tab, names, "t")
    keep, held = tables.stratified_split(tab.labels, frac, 1337)  # fixed split, independent of model seed
    tr_texts = [tab.texts[i] for i in keep]
    va_texts = [tab.texts[i] for i in held]
    tr_y, va_y = y[keep], y[held]
tr_texts, va_texts = preprocess(tr_texts), preprocess(va_texts)
print(f"train {len(tr_texts)} valid {len(va_texts)} labels {names}", flush=True)

key = f"{args.data}-{args.tokenizer}-{args.vocabulary_size}-l{args.lower}-h{args.strip_html}"
tok_dir = f"{args.out_dir}/tok/{key}"
if os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
    tokenizer = load_tokenizer(tok_dir)
else:
    os.makedirs(f"{args.out_dir}/tok", exist_ok=True)
    tokenizer = train_tokenizer(TokenizerConfig(args.tokenizer, args.vocabulary_size), "\n".join(tr_texts), tok_dir)
vocab = tokenizer.vocabulary_size

cache = f"{args.out_dir}/tok/{key}-ids-{args.truncate}-{args.sequence_length}-ds{args.drop_space}.npz"
if os.path.exists(cache):
    z = np.load(cache)
    tr_ids, va_ids = z["tr"], z["va"]
else:
    space_ids = None
    if args.drop_space and args.tokenizer == "wordpiece":
        toks = open(os.path.join(tok_dir, "vocabulary.txt"), encoding="utf-8", newline="\n").read().split("\n")[:-1]
        space_ids = np.array([i for i, t in enumerate(toks) if t.strip() == "" or t in ("\ue00a", "\ue00d")], np.int32)

    def tok(texts):
        big = 100000
        ids, _ = tables.tokenize_texts(tokenizer, texts, big)
        rows = []
        for r in ids:
            r = r[r != 0]
            if space_ids is not None:
                r = r[~np.isin(r, space_ids)]
            L = args.sequence_length
            if len(r) > L:
                if args.truncate == "head":
                    r = r[:L]
                elif args.truncate == "tail":
                    r = r[-L:]
                else:
                    h = L // 4
                    r = np.concatenate([r[:h], r[-(L - h):]])
            rows.append(r)
        w = max(len(r) for r in rows)
        out = np.zeros((len(rows), w), np.int32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        lens = np.array([len(r) for r in rows])
        return out, lens

    tr_ids, trl = tok(tr_texts)
    va_ids, val = tok(va_texts)
    np.savez(cache, tr=tr_ids, va=va_ids)
lens = (tr_ids != 0).sum(1)
print(f"vocab {vocab} train ids {tr_ids.shape} mean len {lens.mean():.1f} p95 {np.percentile(lens,95):.0f} "
      f"cut {(lens>=args.sequence_length).mean():.3f}; valid {va_ids.shape}; prep {time.time()-t_start:.0f}s", flush=True)

# ---------- model ----------
mc = ModelConfig(model="transformer" if args.model == "transformer" else "lstm", vocabulary_size=vocab,
                 sequence_length=max(args.sequence_length, tr_ids.shape[1], va_ids.shape[1]),
                 hidden_dim=args.hidden_dim, intermediate_dim=args.intermediate_dim, num_layers=args.num_layers,
                 num_heads=args.num_heads, dropout=args.dropout)
head_dropout = args.dropout if args.head_dropout < 0 else args.head_dropout


class WordDropout(keras.layers.Layer):
    """Training only: each non-PAD token id becomes PAD with probability rate (no rescaling)."""

    def __init__(self, rate, **kw):
        super().__init__(**kw)
        self.rate = rate

    def call(self, ids, training=None):
        if not training or not self.rate:
            return ids
        keep = keras.random.uniform(keras.ops.shape(ids), seed=None) >= self.rate
        dropped = keras.ops.where(keep, ids, keras.ops.zeros_like(ids))
        # A text left with no token keeps all of them (an all-[PAD] row has nothing to pool).
        any_left = keras.ops.any(keras.ops.not_equal(dropped, 0), axis=1, keepdims=True)
        return keras.ops.where(any_left, dropped, ids)


if args.model in ("lstm", "transformer") and not args.spatial_dropout and not args.embed_dim:
    backbone = build_backbone(mc, causal=False)
elif args.model == "lstm":
    emb_dim = args.embed_dim or args.hidden_dim
    ids_in = keras.Input(shape=(None,), dtype="int32")
    x = keras.layers.Embedding(vocab, emb_dim, mask_zero=True)(ids_in)
    if args.spatial_dropout:
        x = keras.layers.SpatialDropout1D(args.spatial_dropout)(x)
    if args.dropout:
        x = keras.layers.Dropout(args.dropout)(x)
    for i in range(args.num_layers):
        x = keras.layers.Bidirectional(keras.layers.LSTM(args.hidden_dim, return_sequences=True))(x)
        if args.dropout:
            x = keras.layers.Dropout(args.dropout)(x)
    backbone = keras.Model(ids_in, x)
elif args.model == "cnn":
    emb_dim = args.embed_dim or args.hidden_dim
    ids_in = keras.Input(shape=(None,), dtype="int32")
    x = keras.layers.Embedding(vocab, emb_dim)(ids_in)
    if args.spatial_dropout:
        x = keras.layers.SpatialDropout1D(args.spatial_dropout)(x)
    if args.dropout:
        x = keras.layers.Dropout(args.dropout)(x)
    x = keras.layers.Concatenate()([keras.layers.Conv1D(args.hidden_dim, k, padding="same", activation="relu")(x) for k in (3, 4, 5)])
    backbone = keras.Model(ids_in, x)
else:
    raise SystemExit("unknown model")

if args.word_dropout:
    ids_in = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    wd = WordDropout(args.word_dropout)
    inner = build_classifier(backbone, len(names), head_dropout)
    # the pooling mask must come from the dropped ids so the dropped tokens are ignored
    model = keras.Model(ids_in, inner(wd(ids_in)))
else:
    model = build_classifier(backbone, len(names), head_dropout)

tc = TrainConfig(train_data="x", batch_size=args.batch_size, train_steps=args.train_steps, learning_rate=args.learning_rate,
                 min_learning_rate=args.min_learning_rate, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                 beta_2=args.beta_2, gradient_clip_norm=args.clip, seed=args.seed)
jit = (args.model != "lstm") if args.jit < 0 else bool(args.jit)
if args.label_smoothing:
    # SparseCategoricalCrossentropy has no label smoothing: one-hot inside the loss.
    ls = args.label_smoothing
    n = len(names)
    cce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=ls)

    def loss_fn(y_true, y_pred):
        return cce(keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), n), y_pred)
else:
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
optimizer = make_optimizer(tc)
if args.ema:
    cfg = optimizer.get_config()
    cfg.update(use_ema=True, ema_momentum=args.ema, ema_overwrite_frequency=None)
    optimizer = keras.optimizers.AdamW.from_config(cfg)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
model.compile(optimizer=optimizer, loss=loss_fn, jit_compile=jit)
print(f"params {model.count_params():,} jit {jit}", flush=True)

train_ds = tables.classification_dataset(tr_ids, tr_y, args.batch_size, args.seed, 0, args.train_steps)
if args.bucket:
    def bucketed_batches():
        rng = np.random.default_rng(args.seed)
        n, B = len(tr_y), args.batch_size
        made = 0
        tr_len = (tr_ids != 0).sum(1)
        while True:
            order = rng.permutation(n)
            batches = []
            chunk = B * args.bucket
            for c in range(0, n - B + 1, chunk):
                part = order[c : c + chunk]
                part = part[np.argsort(tr_len[part], kind="stable")]
                batches += [part[i : i + B] for i in range(0, len(part) - B + 1, B)]
            for j in rng.permutation(len(batches)):
                rows = batches[j]
                w = max(1, int(tr_len[rows].max()))
                yield tr_ids[rows, :w], tr_y[rows]
                made += 1
                if made >= args.train_steps:
                    return
    train_ds = tf.data.Dataset.from_generator(bucketed_batches, output_signature=(
        tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None,), tf.int32))).prefetch(2)
if args.trim:
    def _trim(x, y):
        width = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(x != 0, tf.int32), axis=1)), 1)
        return x[:, :width], y
    train_ds = train_ds.map(_trim)
eval_ds = tables.evaluation_batches(va_ids, va_y, 256)


def evaluate():
    logits = model.predict(eval_ds, verbose=0)
    return float((logits.argmax(-1) == va_y).mean())


class Cb(keras.callbacks.Callback):
    def __init__(self):
        self.hist = []
        self.t0 = None
        self.eval_time = 0.0

    def on_train_batch_end(self, batch, logs=None):
        step = batch + 1
        if self.t0 is None:
            self.t0 = time.time()
            self.compile_time = self.t0 - t0
        if step % args.eval_every == 0 or step == args.train_steps:
            e0 = time.time()
            acc = evaluate()
            self.eval_time += time.time() - e0
            el = time.time() - self.t0 - self.eval_time
            self.hist.append((step, round(acc, 4), round(el)))
            print(f"step {step} loss {logs['loss']:.4f} acc {acc:.4f} train_s {el:.0f}", flush=True)


cb = Cb()
t0 = time.time()
model.fit(train_ds, epochs=1, steps_per_epoch=args.train_steps, callbacks=[cb], verbose=0)
wall = time.time() - t0
train_s = cb.hist[-1][2]
if args.ema:
    ema_acc = evaluate()
    print(f"EMA weights acc {ema_acc:.4f} (raw {cb.hist[-1][1]:.4f})", flush=True)
    cb.hist.append(("ema", round(ema_acc, 4), cb.hist[-1][2]))
os.makedirs(f"{args.out_dir}/logits", exist_ok=True)
np.save(f"{args.out_dir}/logits/{args.data}-{args.note or 'run'}-s{args.seed}.npy", model.predict(eval_ds, verbose=0))
final = cb.hist[-1][1]
best = max(cb.hist, key=lambda h: h[1])
epochs = args.train_steps * args.batch_size / len(tr_y)
settings = {k: v for k, v in vars(args).items()}
line = (f"| {time.strftime('%H:%M')} | {args.data} | {final:.4f} | best {best[1]:.4f}@{best[0]} | {args.train_steps} ({epochs:.2f} ep) | "
        f"{train_s:.0f}s ({1000*train_s/args.train_steps:.0f} ms/step) | "
        + " ".join(f"{k}={v}" for k, v in settings.items() if k not in ("data",)) + f" | curve {cb.hist} |")
print(line, flush=True)
with open(f"{args.out_dir}/RESULTS.md", "a") as f:
    f.write(line + "\n")

#!/usr/bin/env python3
"""Turn text files into llm.c token shards that `stp train` reads (data.format = llmc).

Tokenizes with a real BPE tokenizer: the tokenizer.json you bring (--tokenizer, any Hugging Face
`tokenizers` file, e.g. GPT-2's), or a byte-level BPE trained on your text (--vocab-size). Every
document (one input file) starts with the end-of-text token, as in llm.c's shards. The tokens
are cut into a validation shard (the first --val-tokens tokens) and training shards of
--shard-tokens tokens each, in input order:

    OUT/val_000000.bin  OUT/train_000000.bin  OUT/train_000001.bin  ...
    OUT/tokenizer.json  (the tokenizer used, to decode samples)
    OUT/meta.json       (vocab_size, eot_id, token width, shard names and token counts)

Shard format (llm.c's dev/data/data_common.py): a header of 256 little-endian int32 -- magic,
version, token count -- then the tokens: magic 20240520 / version 1 with uint16 tokens when
every id fits (vocabulary <= 65536), else magic 20240801 / version 7 with uint32 tokens.

Inputs are text files or folders (every file below a folder, recursively, in sorted path order;
dot-files and binary files -- a NUL byte in the first 8 KiB -- skipped, as `stp train` does for
text). Text is decoded as UTF-8 (invalid bytes become U+FFFD). A file of more than 16 Mi
characters is encoded in pieces cut after a newline (no token spans a cut; whitespace right
after a cut may split differently than in one piece); smaller files are encoded whole.

Needs the `tokenizers` and `numpy` packages (scripts/setup.sh installs them into /opt/stp-venv).
"""

import argparse
import json
import os
import shutil
import sys

HEADER_INTS = 256
MAGIC_U16, VERSION_U16 = 20240520, 1  # llm.c GPT-2 shards
MAGIC_U32, VERSION_U32 = 20240801, 7  # llm.c llama-3 shards
PIECE_CHARS = 16 << 20  # longest text handed to the tokenizer at once (characters)
BATCH_CHARS = 64 << 20  # text encoded per encode_batch call (characters)
BINARY_PROBE = 8192  # bytes searched for a NUL (git's rule, as data/data.cpp)


class UsageError(Exception):
    """Bad input: one line naming the value and what is allowed; exit code 2."""


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="prepare_data.py",
        description="Tokenize text files into llm.c token shards for `stp train` "
        "(data.format=llmc).",
        epilog="example: prepare_data.py --vocab-size 4096 --out data/shards my_texts/\n"
        "then:    stp run -n 4 -- stp train --set data.format=llmc "
        "--set 'data.path=data/shards/train_*.bin' --set model.vocab=<vocab_size from "
        "meta.json>",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="text files or folders of text files")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (created; existing shards in it are replaced)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokenizer", metavar="FILE",
                     help="a Hugging Face tokenizer.json to use as it is (copied to OUT)")
    src.add_argument("--vocab-size", type=int, metavar="N",
                     help="train a byte-level BPE of at most N tokens on the inputs "
                     "(N in [257, 16777216]; small texts may yield fewer)")
    p.add_argument("--eot", default="<|endoftext|>", metavar="TOKEN",
                   help="the end-of-text token that starts every document (default "
                   "%(default)s; a trained tokenizer gets it as id 0)")
    p.add_argument("--val-tokens", type=int, default=32768, metavar="N",
                   help="tokens in the validation shard, >= 0 (default %(default)s)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, metavar="N",
                   help="tokens per training shard, [1, 2147483647] (default %(default)s)")
    args = p.parse_args(argv)
    if args.vocab_size is not None and not 257 <= args.vocab_size <= 1 << 24:
        p.error(f"--vocab-size={args.vocab_size} must be in [257, 16777216] "
                "(256 bytes + the end-of-text token at least)")
    if args.val_tokens < 0:
        p.error(f"--val-tokens={args.val_tokens} must be >= 0")
    if not 1 <= args.shard_tokens <= 2**31 - 1:
        p.error(f"--shard-tokens={args.shard_tokens} must be in [1, 2147483647] "
                "(llm.c's header holds the count in an int32)")
    return args


def list_text_files(inputs):
    """Every input file, and every regular file below an input folder, sorted per folder;
    dot-files and binary files skipped. Returns (files, skipped binary files)."""
    files, skipped = [], []
    for path in inputs:
        if os.path.isfile(path):
            candidates = [path]
        elif os.path.isdir(path):
            candidates = []
            for root, dirs, names in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                candidates += [os.path.join(root, n) for n in names if not n.startswith(".")]
            candidates.sort(key=os.fsencode)
        else:
            raise UsageError(f"input '{path}' does not exist (give text files or folders)")
        for f in candidates:
            if not os.path.isfile(f):
                continue
            with open(f, "rb") as fh:
                if b"\0" in fh.read(BINARY_PROBE):
                    skipped.append(f)
                    continue
            files.append(f)
    if not files:
        raise UsageError(f"no text files in {' '.join(inputs)} ({len(skipped)} binary files skipped)")
    return files, skipped


def pieces_of(path):
    """The file's text: whole when it is up to PIECE_CHARS long, else in pieces cut after the
    last newline of each PIECE_CHARS block (a piece without a newline is cut where it ends)."""
    with open(path, "r", encoding="utf-8", errors="replace", newline="") as fh:
        carry = ""
        while True:
            block = fh.read(PIECE_CHARS)
            text = carry + block
            if len(block) < PIECE_CHARS:  # the end of the file
                if text:
                    yield text
                return
            cut = text.rfind("\n") + 1 or len(text)
            yield text[:cut]
            carry = text[cut:]


def all_pieces(files):
    for f in files:
        yield from pieces_of(f)


def document_pieces(files):
    """(starts_document, text) for every piece of every file, in order."""
    for f in files:
        first = True
        for piece in pieces_of(f):
            yield first, piece
            first = False
        if first:  # an empty file is still a document: its end-of-text token alone
            yield True, ""


def train_tokenizer(files, vocab_size, eot):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eot],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(all_pieces(files), trainer=trainer)
    return tok


class ShardWriter:
    """Cuts the token stream into the val shard, then training shards, as they fill."""

    def __init__(self, out, val_tokens, shard_tokens, vocab_size):
        import numpy as np

        self.np = np
        self.out = out
        self.wide = vocab_size > 1 << 16  # some id does not fit in uint16
        self.dtype = np.dtype("<u4") if self.wide else np.dtype("<u2")  # little-endian
        self.sizes = [("val", val_tokens)] if val_tokens > 0 else []
        self.shard_tokens = shard_tokens
        self.buffer, self.buffered = [], 0
        self.written = []  # (file name, tokens)
        self.train_count = 0

    def _capacity(self):
        return self.sizes[0][1] if self.sizes else self.shard_tokens

    def add(self, ids):
        arr = self.np.asarray(ids, dtype=self.np.int64)
        while arr.size:
            take = min(arr.size, self._capacity() - self.buffered)
            self.buffer.append(arr[:take])
            self.buffered += take
            arr = arr[take:]
            if self.buffered == self._capacity():
                self._flush()

    def finish(self):
        if self.buffered:
            self._flush()
        return self.written

    def _flush(self):
        if self.sizes:
            name = "val_000000.bin"
            self.sizes.pop(0)
        else:
            name = f"train_{self.train_count:06d}.bin"
            self.train_count += 1
        tokens = self.np.concatenate(self.buffer).astype(self.dtype)
        header = self.np.zeros(HEADER_INTS, dtype="<i4")
        header[0], header[1] = (MAGIC_U32, VERSION_U32) if self.wide else (MAGIC_U16, VERSION_U16)
        header[2] = tokens.size
        with open(os.path.join(self.out, name), "wb") as fh:
            fh.write(header.tobytes())
            fh.write(tokens.tobytes())
        self.written.append((name, int(tokens.size)))
        self.buffer, self.buffered = [], 0


def prepare(args):
    try:
        import numpy  # noqa: F401
        from tokenizers import Tokenizer
    except ImportError as e:
        raise UsageError(f"{e}: install the `tokenizers` and `numpy` packages "
                         "(scripts/setup.sh puts them into /opt/stp-venv)")

    files, skipped = list_text_files(args.inputs)
    os.makedirs(args.out, exist_ok=True)
    for name in os.listdir(args.out):  # a rerun must not leave shards of the last one behind
        if (name.startswith("train_") or name.startswith("val_")) and name.endswith(".bin"):
            os.remove(os.path.join(args.out, name))
    tok_path = os.path.join(args.out, "tokenizer.json")
    if args.tokenizer:
        if not os.path.isfile(args.tokenizer):
            raise UsageError(f"--tokenizer '{args.tokenizer}' is not a file")
        try:
            tok = Tokenizer.from_file(args.tokenizer)
        except Exception as e:  # the library raises a bare Exception for a malformed file
            raise UsageError(f"--tokenizer '{args.tokenizer}' is not a tokenizers JSON file: {e}")
        if os.path.abspath(args.tokenizer) != os.path.abspath(tok_path):
            shutil.copyfile(args.tokenizer, tok_path)
    else:
        tok = train_tokenizer(files, args.vocab_size, args.eot)
        tok.save(tok_path)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    eot_id = tok.token_to_id(args.eot)
    if eot_id is None:
        raise UsageError(f"--eot '{args.eot}' is not a token of the tokenizer (name its "
                         "end-of-text token, e.g. --eot '</s>')")

    writer = ShardWriter(args.out, args.val_tokens, args.shard_tokens, vocab_size)
    max_id = eot_id
    batch, batch_chars = [], 0

    def encode(batch):
        nonlocal max_id
        encodings = tok.encode_batch([text for _, text in batch], add_special_tokens=False)
        for (starts, _), enc in zip(batch, encodings):
            if starts:
                writer.add([eot_id])  # every document starts with the end-of-text token
            if enc.ids:
                max_id = max(max_id, max(enc.ids))
                writer.add(enc.ids)

    for starts, text in document_pieces(files):
        batch.append((starts, text))
        batch_chars += len(text)
        if batch_chars >= BATCH_CHARS:
            encode(batch)
            batch, batch_chars = [], 0
    if batch:
        encode(batch)
    written = writer.finish()
    if max_id >= vocab_size:
        raise UsageError(f"the tokenizer produced id {max_id} >= its vocabulary size {vocab_size}")
    train = [w for w in written if w[0].startswith("train_")]
    total = sum(n for _, n in written)
    if not train:
        raise UsageError(f"the text has only {total} tokens, all taken by --val-tokens="
                         f"{args.val_tokens}; lower --val-tokens to leave training tokens")
    meta = {
        "vocab_size": vocab_size,
        "eot_id": eot_id,
        "token_bytes": 4 if writer.wide else 2,
        "magic": MAGIC_U32 if writer.wide else MAGIC_U16,
        "tokenizer": "tokenizer.json",
        "documents": len(files),
        "shards": [{"file": n, "tokens": t} for n, t in written],
    }
    with open(os.path.join(args.out, "meta.json"), "w") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    return files, skipped, meta, train


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        files, skipped, meta, train = prepare(args)
    except UsageError as e:
        print(f"prepare_data.py: error: {e}", file=sys.stderr)
        return 2
    width = "uint32" if meta["token_bytes"] == 4 else "uint16"
    train_tokens = sum(t for _, t in train)
    val = [s for s in meta["shards"] if s["file"].startswith("val_")]
    print(f"prepare_data: {len(files)} documents"
          + (f" ({len(skipped)} binary files skipped)" if skipped else "")
          + f", vocabulary {meta['vocab_size']} (eot id {meta['eot_id']}), {width} tokens")
    print(f"prepare_data: {args.out}: {len(train)} train shard{'s' if len(train) != 1 else ''} "
          f"({train_tokens} tokens)"
          + (f", val_000000.bin ({val[0]['tokens']} tokens)" if val else "")
          + ", tokenizer.json, meta.json")
    glob = os.path.join(args.out, "train_*.bin")
    print(f"train on them: stp run -n 4 -- stp train --set data.format=llmc "
          f"--set 'data.path={glob}' --set model.vocab={meta['vocab_size']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Make a small VIVOS-shaped Vietnamese corpus with espeak-ng (speech) and sox (16 kHz resampling).

    python sample_data/make_vivos_like.py --out sample_data/vivos_sample

Writes the raw VIVOS release layout, so every script reads it exactly like the real corpus:

    OUT/train/prompts.txt   VIVOSSPK01_R001 KHÁCH SẠN NÀY RẤT ĐẸP   (upper case, like VIVOS)
    OUT/train/genders.txt   VIVOSSPK01 m
    OUT/train/waves/VIVOSSPK01/VIVOSSPK01_R001.wav   (16 kHz mono 16-bit; --format flac for .flac)
    OUT/test/...            the same for the test speakers (VIVOSDEV01, ...)

With --text FILE the speakers read sentences of that file (one a line, e.g. sample_data/vietnamese_text.txt,
real Vietnamese prose) instead of random word sequences, each sentence read by one speaker only: the voices
that prepare_vivos.py holds out for validation then read sentences no train voice reads, and the file's
unused sentences are text no split contains (for a language model's --lm-text).

Each "speaker" is one espeak-ng voice: a dialect (northern, central, southern) with a voice variant
(+m1..+m7 male, +f1..+f5 female), its own speaking rate and pitch. Test speakers and test sentences
are never seen in train. The tests and the bundled sample (`sample_data/vivos_sample/`) are made by
this script; it needs the Debian packages `espeak-ng` and `sox`.
"""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Everyday Vietnamese words (tone marks on purpose: all six tones occur).
WORDS = """
tôi bạn anh chị em ông bà cô chú mẹ cha con nhà trường lớp học sinh viên thầy giáo bác sĩ
người bệnh viện chợ đường phố sông núi biển trời mưa nắng gió lạnh nóng đẹp xấu tốt vui buồn
ăn uống ngủ đi đến về làm việc chơi đọc viết nói nghe nhìn thấy biết hiểu muốn cần có không
rất nhiều ít lớn nhỏ mới cũ sáng trưa chiều tối hôm nay mai qua năm tháng ngày giờ phút
cơm phở bánh mì cà phê trà sữa nước cá thịt gà rau quả chuối xoài cam táo
xe máy ô tô xe đạp tàu hỏa máy bay điện thoại máy tính sách vở bút bàn ghế cửa sổ
hà nội sài gòn huế đà nẵng cần thơ hải phòng việt nam
một hai ba bốn năm sáu bảy tám chín mười trăm nghìn
đã đang sẽ vừa mới cũng vẫn còn lại nữa và với của cho từ ở trong ngoài trên dưới
khách sạn phòng giá tiền mua bán hàng siêu thị công ty nhân viên gia đình bạn bè
""".split()

# espeak-ng Vietnamese dialects and voice variants; the variant fixes the speaker's gender.
DIALECTS = ["vi", "vi-vn-x-central", "vi-vn-x-south"]
VARIANTS = [f"m{i}" for i in range(1, 8)] + [f"f{i}" for i in range(1, 6)]


def make_sentences(count: int, rng: random.Random, min_words: int = 4, max_words: int = 9) -> list[str]:
    """Distinct random word sequences, upper case as in VIVOS prompts."""
    sentences: set[str] = set()
    while len(sentences) < count:
        n = rng.randint(min_words, max_words)
        sentences.add(" ".join(rng.choice(WORDS) for _ in range(n)).upper())
    return sorted(sentences)


def make_voices(count: int, rng: random.Random) -> list[dict]:
    """`count` distinct espeak-ng voices with their own rate and pitch."""
    combos = [(d, v) for v in VARIANTS for d in DIALECTS]
    rng.shuffle(combos)
    if count > len(combos):
        raise ValueError(f"at most {len(combos)} distinct voices, asked for {count}")
    return [
        {"voice": f"{d}+{v}", "gender": v[0], "rate": rng.randint(135, 175), "pitch": rng.randint(35, 65)}
        for d, v in combos[:count]
    ]


def synthesize(text: str, voice: dict, wav_path: Path, sample_rate: int = 16000) -> None:
    """espeak-ng speaks `text` lower-cased (it spells out upper-case words) and sox resamples."""
    speech = subprocess.run(
        ["espeak-ng", "-v", voice["voice"], "-s", str(voice["rate"]), "-p", str(voice["pitch"]), "--stdout",
         text.lower()],
        check=True, capture_output=True,
    ).stdout
    subprocess.run(
        ["sox", "-q", "-t", "wav", "-", "-r", str(sample_rate), "-c", "1", "-b", "16", str(wav_path)],
        input=speech, check=True, capture_output=True,
    )


def write_split(split_dir: Path, prefix: str, voices: list[dict], sentences: list[str], per_speaker: int,
                rng: random.Random, sample_rate: int, audio_format: str, one_reader: bool = False) -> None:
    """One VIVOS split folder: each speaker reads `per_speaker` sentences drawn from `sentences` (with
    one_reader, the next `per_speaker` of them, so no two speakers read the same sentence)."""
    jobs, prompts, genders = [], [], []
    for number, voice in enumerate(voices, start=1):
        speaker = f"{prefix}{number:02d}"
        genders.append(f"{speaker} {voice['gender']}")
        (split_dir / "waves" / speaker).mkdir(parents=True, exist_ok=True)
        read = (sentences[(number - 1) * per_speaker: number * per_speaker] if one_reader
                else rng.sample(sentences, per_speaker))
        for r, sentence in enumerate(read, start=1):
            utt_id = f"{speaker}_R{r:03d}"
            prompts.append(f"{utt_id} {sentence}")
            jobs.append((sentence, voice, split_dir / "waves" / speaker / f"{utt_id}.{audio_format}"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda job: synthesize(*job, sample_rate=sample_rate), jobs))
    (split_dir / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    (split_dir / "genders.txt").write_text("\n".join(genders) + "\n", encoding="utf-8")


def make_corpus(out: Path, train_speakers: int = 8, test_speakers: int = 3, train_per_speaker: int = 12,
                test_per_speaker: int = 8, seed: int = 0, sample_rate: int = 16000, audio_format: str = "wav",
                text: Path | None = None) -> Path:
    """Write a VIVOS-shaped corpus to `out`; test speakers and test sentences are unseen in train. With
    `text`, the sentences come from that file and each is read by one speaker."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install it (Debian/Ubuntu: apt-get install espeak-ng sox)")
    rng = random.Random(seed)
    voices = make_voices(train_speakers + test_speakers, rng)
    # Test speakers alternate female / male (as VIVOS's test set has both); the rest train.
    by_gender = {g: [v for v in voices if v["gender"] == g] for g in ("f", "m")}
    test_voices = [by_gender["fm"[k % 2]].pop() if by_gender["fm"[k % 2]] else by_gender["mf"[k % 2]].pop()
                   for k in range(test_speakers)]
    voices = [v for v in voices if v not in test_voices] + test_voices
    if text is None:
        n_train_sentences = max(train_per_speaker * 3, train_speakers * train_per_speaker // 2)
        n_test_sentences = max(test_per_speaker * 2, test_speakers * test_per_speaker)
        sentences = make_sentences(n_train_sentences + n_test_sentences, rng)
    else:
        n_train_sentences, n_test_sentences = train_speakers * train_per_speaker, test_speakers * test_per_speaker
        sentences = sorted({line.strip().upper() for line in Path(text).read_text(encoding="utf-8").splitlines()
                            if line.strip()})
        if len(sentences) < n_train_sentences + n_test_sentences:
            raise SystemExit(f"--text {text}: {len(sentences)} distinct sentences, and {n_train_sentences} train + "
                             f"{n_test_sentences} test readings of one sentence each need more: ask for fewer "
                             "speakers or utterances per speaker")
    rng.shuffle(sentences)
    out = Path(out)
    train_sentences = sentences[:n_train_sentences]
    test_sentences = sentences[n_train_sentences: n_train_sentences + n_test_sentences]
    write_split(out / "train", "VIVOSSPK", voices[:train_speakers], train_sentences, train_per_speaker, rng,
                sample_rate, audio_format, one_reader=text is not None)
    write_split(out / "test", "VIVOSDEV", voices[train_speakers:], test_sentences, test_per_speaker, rng,
                sample_rate, audio_format, one_reader=text is not None)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to create (VIVOS layout)")
    parser.add_argument("--train-speakers", type=int, default=8)
    parser.add_argument("--test-speakers", type=int, default=3)
    parser.add_argument("--train-per-speaker", type=int, default=12, help="utterances per train speaker")
    parser.add_argument("--test-per-speaker", type=int, default=8, help="utterances per test speaker")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--format", choices=["wav", "flac"], default="wav", help="flac: half the size, lossless")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text", type=Path, metavar="FILE",
                        help="read this file's sentences (one a line, UTF-8), each by one speaker, instead of "
                             "random word sequences")
    args = parser.parse_args(argv)
    make_corpus(args.out, args.train_speakers, args.test_speakers, args.train_per_speaker,
                args.test_per_speaker, args.seed, args.sample_rate, args.format, args.text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

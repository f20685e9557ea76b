"""A small AIST-like folder made on the spot, offline: `python -m dancedata.sample sample/`.

Every video is real H.264 with B-frames (x264 through PyAV's bundled FFmpeg) at 30 fps, named as
AIST names its files, so the build's grouping, splits, skipping and warnings all show:

- a stick figure dances; its **genre shows in the motion** (Break spins, Pop hits its arms on the
  beat, Lock freezes between steps, Waack whirls its arms, House bounces, ...), never in a colour;
- each **dancer** has a build and a colour of their own (so a model can also learn who dances, which
  is what `--split dancer` guards against); each dancer dances several choreographies, each seen
  from several **cameras** (another position, size and background), which the sequence split keeps
  together; the music (m{genre}{0-5}) sets the tempo;
- beside them, what a real download folder holds: a download cut short (its first frames decode: the
  build keeps them and lists it as truncated), a showcase video (no genre), a page saved as .mp4, and
  a note.

Deterministic for a seed (the same pixels; the encoder's bytes are those of this PyAV build), and
made in seconds on 2 cores. It writes only into an empty or new folder: clips of two samples with
other options in one folder would give one dancer number to dancers of two genres.
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from dancedata import cli, config
from dancedata.errors import ConfigError, InputError

# How each genre moves: every one a different use of the same body, so only the motion tells them apart.
MOTIONS = ("BR", "PO", "LO", "WA", "HO", "KR", "LH", "MH", "JB", "JS")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    genres: str = config.flag("comma-separated AIST genre codes (BR, PO, LO, WA, HO, KR, LH, MH, JB, JS)", default="BR,PO,LO,WA")
    dancers: int = config.flag("dancers per genre (each dances --choreographies pieces)", default=3)
    choreographies: int = config.flag("choreographies per dancer (each one performance, one sequence)", default=2)
    cameras: int = config.flag("camera views of each performance (1-9)", default=2)
    seconds: float = config.flag("length of each clip in seconds", default=3.0)
    width: int = config.flag("frame width in pixels (even)", default=640)
    height: int = config.flag("frame height in pixels (even)", default=360)
    seed: int = config.flag("seed: the same seed gives the same pixels", default=0)
    overwrite: bool = config.flag("delete every file the folder holds before writing (without it, a folder that holds "
                                  "anything is refused); a folder holding subfolders is refused even so", default=False)

    def __post_init__(self):
        genres = self.genres.split(",")
        unknown = [g for g in genres if g not in MOTIONS]
        if unknown or not genres:
            raise ConfigError(f"genres must be AIST codes among {', '.join(MOTIONS)}; got {self.genres!r}")
        for name, low, high in (("dancers", 1, 30), ("choreographies", 1, 9), ("cameras", 1, 9)):
            if not low <= getattr(self, name) <= high:
                raise ConfigError(f"{name} must be in {low}..{high}, got {getattr(self, name)!r}")
        if not 0.5 <= self.seconds <= 60:
            raise ConfigError(f"seconds must be in 0.5..60, got {self.seconds!r}")
        if not (64 <= self.width <= 1920 and 64 <= self.height <= 1080) or self.width % 2 or self.height % 2:
            raise ConfigError(f"width x height must be even and within 64x64..1920x1080, got {self.width}x{self.height}")


FPS = 30
# x264 with B-frames (3, pyramid) and a key frame every 2 s, as real footage has.
ENCODER = {"bf": "3", "g": "60", "preset": "veryfast", "crf": "23"}


def _pose(genre: str, t: float, beat: float) -> dict:
    """Joint angles (radians) and offsets of the figure at time t for a genre, with a beat of `beat` s."""
    phase = 2 * math.pi * t / beat
    hit = 1.0 if (t / beat) % 1 < 0.5 else -1.0  # a square wave on the beat
    pose = {"spin": 0.0, "dx": 0.0, "dy": 0.0, "arm_l": -0.6, "arm_r": 0.6, "leg_l": -0.2, "leg_r": 0.2}
    if genre == "BR":  # spins on the floor
        pose.update(spin=phase / 2, dy=0.25)
    elif genre == "PO":  # arms snap between two positions on the beat
        pose.update(arm_l=-1.4 if hit > 0 else -0.2, arm_r=1.4 if hit < 0 else 0.2)
    elif genre == "LO":  # steps sideways, freezes, steps back
        pose.update(dx=0.25 * round(math.sin(phase / 2) * 2) / 2, arm_l=-1.0, arm_r=1.0)
    elif genre == "WA":  # arms whirl overhead
        pose.update(arm_l=-math.pi / 2 + 1.2 * math.sin(2 * phase), arm_r=math.pi / 2 + 1.2 * math.cos(2 * phase))
    elif genre == "HO":  # bounces, feet alternate
        pose.update(dy=0.06 * abs(math.sin(phase)), leg_l=-0.2 - 0.5 * max(0, math.sin(phase)), leg_r=0.2 + 0.5 * max(0, -math.sin(phase)))
    elif genre == "KR":  # stomps and swings the arms wide
        pose.update(dy=0.05 * hit, arm_l=-0.6 - 0.8 * max(0, hit), arm_r=0.6 + 0.8 * max(0, -hit))
    elif genre == "LH":  # jumps
        pose.update(dy=-0.15 * max(0, math.sin(phase)), leg_l=-0.4, leg_r=0.4)
    elif genre == "MH":  # slides side to side
        pose.update(dx=0.15 * math.sin(phase / 2), leg_l=-0.2 + 0.3 * math.sin(phase), leg_r=0.2 + 0.3 * math.sin(phase))
    elif genre == "JB":  # rocks forward and back
        pose.update(spin=0.3 * math.sin(phase), arm_l=-0.9, arm_r=0.9)
    else:  # JS: twists
        pose.update(arm_l=-0.6 + 0.7 * math.sin(phase), arm_r=0.6 + 0.7 * math.sin(phase), leg_l=-0.3 * hit, leg_r=0.3 * hit)
    return pose


def _frame(cfg: SampleConfig, genre: str, t: float, beat: float, dancer: dict, camera: dict, background: np.ndarray) -> np.ndarray:
    """One RGB frame: the camera's background and the dancer's figure in the genre's pose at time t."""
    import cv2

    image = background.copy()
    pose = _pose(genre, t, beat)
    scale = camera["scale"] * dancer["size"] * cfg.height
    cx = cfg.width / 2 + camera["dx"] * cfg.width + pose["dx"] * scale
    cy = cfg.height * 0.55 + pose["dy"] * scale

    def point(x, y):  # body coordinates (units of scale, y down) -> pixels, rotated by the spin
        c, s = math.cos(pose["spin"]), math.sin(pose["spin"])
        return int(cx + scale * (c * x - s * y)), int(cy + scale * (s * x + c * y))

    colour, thick = dancer["colour"], max(2, int(scale * 0.06))
    neck, hip = (0.0, -0.3), (0.0, 0.1)
    cv2.line(image, point(*neck), point(*hip), colour, thick)
    cv2.circle(image, point(0.0, -0.42), max(3, int(scale * 0.11)), colour, -1)
    for side, angle in ((-1, pose["arm_l"]), (1, pose["arm_r"])):
        hand = (neck[0] + side * 0.35 * abs(math.cos(angle)), neck[1] + 0.35 * math.sin(angle) * side * -1 + 0.1)
        cv2.line(image, point(*neck), point(*hand), colour, thick)
    for angle in (pose["leg_l"], pose["leg_r"]):
        foot = (hip[0] + 0.4 * math.sin(angle), hip[1] + 0.4 * math.cos(angle))
        cv2.line(image, point(*hip), point(*foot), colour, thick)
    return image


def write_clip(path: str, frames, faststart: bool = False) -> None:
    """H.264 with B-frames, yuv420p, 30 fps, through PyAV. faststart: the index (moov) before the
    frames, as files served for the web have it, so a download cut short still opens."""
    import av

    with av.open(path, "w", options={"movflags": "+faststart"} if faststart else {}) as container:
        stream = None
        for image in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=FPS)
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = dict(ENCODER)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _clear(out: str, overwrite: bool) -> list:
    """Makes sure `out` is empty (deleting its files with overwrite); returns the names deleted."""
    if not os.path.exists(out):
        return []
    if not os.path.isdir(out):
        raise InputError(f"{out} is a file, not a folder: choose a new or empty folder for the sample")
    names = sorted(os.listdir(out))
    if names and not overwrite:
        raise InputError(f"{out} already holds {len(names)} file(s) (e.g. {names[0]}): the sample is written into an empty "
                         "or new folder; choose another, or pass --overwrite to delete them first")
    folders = [name for name in names if os.path.isdir(os.path.join(out, name))]
    if folders:
        raise InputError(f"{out} holds a folder ({folders[0]}/): --overwrite deletes files only, never folders; "
                         "remove it or choose another folder")
    for name in names:
        os.remove(os.path.join(out, name))
    return names


def make_sample(out: str, cfg: SampleConfig = SampleConfig()) -> dict:
    """Writes the sample folder; returns {"videos": [file names], "awkward": {file name: what it is},
    "deleted": [names of the files `out` held before, deleted with cfg.overwrite]}. Raises InputError
    when `out` holds anything and cfg.overwrite is False."""
    from dancedata import naming

    deleted = _clear(out, cfg.overwrite)
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    genres = cfg.genres.split(",")
    count = int(round(cfg.seconds * FPS))
    cameras = [{"dx": float(rng.uniform(-0.2, 0.2)), "scale": float(rng.uniform(0.35, 0.5)),
                "tint": rng.integers(20, 90, 3)} for _ in range(cfg.cameras)]
    backgrounds = []
    for camera in cameras:  # a floor, a wall and some texture, per camera
        y = np.linspace(0, 1, cfg.height)[:, None, None]
        base = (camera["tint"][None, None, :] * (0.6 + 0.8 * y)).astype(np.float32)
        texture = rng.integers(0, 25, (-(-cfg.height // 8), -(-cfg.width // 8), 3)).repeat(8, 0).repeat(8, 1)
        texture = texture[: cfg.height, : cfg.width]
        backgrounds.append(np.clip(np.broadcast_to(base, (cfg.height, cfg.width, 3)) + texture, 0, 255).astype(np.uint8))
    made, first = [], None
    for g, genre in enumerate(genres):
        for d in range(cfg.dancers):
            number = g * cfg.dancers + d + 1
            dancer = {"colour": tuple(int(v) for v in rng.integers(120, 256, 3)), "size": float(rng.uniform(0.8, 1.15))}
            for c in range(cfg.choreographies):
                music = (d + c) % 6
                beat = 60.0 / (90 + 8 * music)  # the music sets the tempo: 90 to 130 bpm
                for camera_index, camera in enumerate(cameras):
                    stem = f"g{genre}_sBM_c{camera_index + 1:02d}_d{number:02d}_m{genre}{music}_ch{c + 1:02d}"
                    naming.parse_aist_name(stem)  # a ValueError here is a bug in this module
                    scene = (genre, beat, dancer, camera, backgrounds[camera_index])
                    write_clip(os.path.join(out, stem + ".mp4"), (_frame(cfg, scene[0], i / FPS, *scene[1:]) for i in range(count)))
                    made.append(stem + ".mp4")
                    first = first or scene
    awkward = {
        f"g{genres[0]}_sBM_c01_d{len(genres) * cfg.dancers + 1:02d}_m{genres[0]}0_ch09.mp4": "a download cut short",
        "sSH_c01_d01_mBR0_v1.mp4": "a showcase (no genre to learn)",
        f"g{genres[-1]}_sBM_c01_d{len(genres) * cfg.dancers + 2:02d}_m{genres[-1]}0_ch09.mp4": "an error page saved as .mp4",
        "notes.txt": "not a video",
    }
    names = list(awkward)
    cut = os.path.join(out, names[0])  # the first clip again, its download stopped halfway
    write_clip(cut, (_frame(cfg, first[0], i / FPS, *first[1:]) for i in range(count)), faststart=True)
    os.truncate(cut, os.path.getsize(cut) // 2)
    write_clip(os.path.join(out, names[1]), (_frame(cfg, "BR", i / FPS, 0.5, {"colour": (200, 200, 200), "size": 1.0},
                                                   cameras[0], backgrounds[0]) for i in range(FPS)))
    with open(os.path.join(out, names[2]), "w") as handle:
        handle.write("<html><body>504 Gateway Time-out</body></html>\n")
    with open(os.path.join(out, names[3]), "w") as handle:
        handle.write("made by python -m dancedata.sample\n")
    return {"videos": made, "awkward": awkward, "deleted": deleted}


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m dancedata.sample",
                                description="Write a small AIST-like folder of real H.264 clips, made here (no download).")
    parser.add_argument("out", help="folder to write (e.g. sample/)")
    config.add_flags(parser, SampleConfig)
    args = parser.parse_args(argv)
    cfg = config.from_flags(args, SampleConfig)
    made = make_sample(args.out, cfg)
    if made["deleted"]:
        shown = ", ".join(made["deleted"][:3]) + (", ..." if len(made["deleted"]) > 3 else "")
        print(f"deleted the {len(made['deleted'])} file(s) {args.out} held ({shown}), as --overwrite asks")
    print(f"wrote {len(made['videos'])} videos to {args.out} ({len(cfg.genres.split(','))} genres x {cfg.dancers} dancers x "
          f"{cfg.choreographies} choreographies x {cfg.cameras} cameras, {cfg.seconds:g} s at {FPS} fps, "
          f"{cfg.width}x{cfg.height}) and {len(made['awkward'])} files a real folder has: "
          + "; ".join(f"{name} ({what})" for name, what in made["awkward"].items()))
    return 0


if __name__ == "__main__":
    cli.exit(cli.run(main, "sample", tensorflow=False))

"""`python -m dancedata`: which commands there are."""
import sys

COMMANDS = """\
usage: python -m dancedata.<command> --help

  download      fetch AIST Dance DB videos (resumable, retried, checksummed)
  build_shards  decode each video once, extract features in batches, write TFRecord shards + manifest.json
  inspect       summarise a shard folder: splits, genres, skipped files
  predict       top-k genres of videos with a model trained by train.py
  data_service  start a tf.data service dispatcher or worker

Training: python train.py --shards tfrecords/
The same tools as one command: dancedata build|inspect|train|predict|download|data-service"""

if __name__ == "__main__":
    print(COMMANDS)
    sys.exit(0 if len(sys.argv) == 1 or sys.argv[1] in ("-h", "--help") else 2)

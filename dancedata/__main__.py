"""`python -m dancedata COMMAND ...`: the `dancedata` console script (`python -m dancedata` lists the commands)."""
from dancedata.console import entry_point

if __name__ == "__main__":
    entry_point()

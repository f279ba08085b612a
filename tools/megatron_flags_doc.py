"""Write docs/megatron_flags.md from the table in megalite/megatron_flags.py (run after changing it)."""

import os

from megalite.config import flag_helps
from megalite.megatron_flags import markdown
from megalite.utils.atomic import atomic_write

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "megatron_flags.md")

if __name__ == "__main__":
    with atomic_write(PATH, "w") as f:
        f.write(markdown(flag_helps()))
    print(f"wrote {PATH}")

"""What pyproject.toml cannot say: the repo's top-level configs/ folder (the offline model configs
and tokenizers the worker loads every single-file checkpoint with) ships inside the wheel as the
package data of `worker.configs`, so that a normal install (pip, pipx, uv tool, a docker image)
finds it. The folder stays where it is in the repo; worker/pipelines.py `configs_dir()` looks
beside the packages first (a checkout) and then in the installed `worker/configs/`.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["farm", "farm.*", "worker", "worker.*"]), "worker.configs"],
    package_dir={"worker.configs": "configs"},
    package_data={
        "farm": ["data/*", "review/static/*"],
        # every config folder and tokenizer file; the folders are data, not Python packages
        "worker.configs": ["**/*.json", "**/*.txt", "**/*.model", "*.md", "*.yaml", "**/*.sh"],
    },
    exclude_package_data={"worker.configs": ["*.py"]},
)

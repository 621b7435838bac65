"""``scrapy genspider``, with the project's templates next to Scrapy's own.

``TEMPLATES_DIR`` (settings) names the project's template folder; Scrapy's
genspider would then hide its built-in templates (``basic``, ``crawl``,
``csvfeed``, ``xmlfeed``): here a template is looked up in the project's
folder first, then in Scrapy's. The project's ``site`` template writes the
spider (on :class:`crawler.frontier.spider.FrontierSpider`, with its item,
schema and per-site settings) and its test, ``tests/test_spider_<name>.py``,
which replays the fixtures ``scrapy savefixture`` records (docs/spiders.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import scrapy
from scrapy.commands.genspider import Command as ScrapyGenspiderCommand
from scrapy.utils.conf import closest_scrapy_cfg
from scrapy.utils.template import render_templatefile

SCRAPY_TEMPLATES = Path(scrapy.__path__[0], "templates", "spiders")
# Template name -> the test module template written with it (under TEMPLATES_DIR).
TEST_TEMPLATES = {"site": Path("tests", "test_spider.py.tmpl")}


class Command(ScrapyGenspiderCommand):
    """Scrapy's ``genspider``; see the module docstring."""

    def _template_dirs(self) -> list[Path]:
        return [Path(self.templates_dir), SCRAPY_TEMPLATES]

    def _find_template(self, template: str) -> Path | None:
        filename = template if template.endswith(".tmpl") else f"{template}.tmpl"
        for folder in (Path(), *self._template_dirs()):
            if (folder / filename).exists():
                return folder / filename
        return super()._find_template(template)  # prints Scrapy's "Unable to find template"

    def _list_templates(self) -> None:
        names = sorted({f.stem for d in self._template_dirs() if d.is_dir() for f in d.iterdir()
                        if f.suffix == ".tmpl"})
        print("Available templates:\n", "\n".join(f"  {name}" for name in names))

    def _generate_template_variables(self, module: str, name: str, url: str, template_name: str) -> dict[str, Any]:
        tvars = super()._generate_template_variables(module, name, url, template_name)
        assert self.settings is not None
        tvars["itemclass"] = tvars["classname"].removesuffix("Spider") + "Item"
        tvars["spiders_module"] = self.settings.get("NEWSPIDER_MODULE") or ""
        return tvars

    def _genspider(self, module: str, name: str, url: str, template_name: str, template_file: Any) -> Path:
        spider_file = super()._genspider(module, name, url, template_name, template_file)
        test_template = TEST_TEMPLATES.get(template_name)
        if test_template is not None:
            cfg = closest_scrapy_cfg()
            root = Path(cfg).parent if cfg else Path.cwd()
            test_file = root / "tests" / f"test_spider_{module}.py"
            test_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(self.templates_dir).parent / test_template, test_file)
            render_templatefile(test_file, **self._generate_template_variables(module, name, url, template_name))
            print(f"Created its test:\n  {test_file.relative_to(root)}")
            print(f"Next: fill the selectors, then `scrapy savefixture {name} URL` records a page it is tested on.")
        return spider_file

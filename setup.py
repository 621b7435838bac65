"""For scrapyd-deploy, which builds the egg with ``python setup.py bdist_egg``
and writes a setup.py of its own where there is none. Everything is in
pyproject.toml (packages, Lua package data, the ``scrapy`` settings entry point).
"""

from setuptools import setup

setup()

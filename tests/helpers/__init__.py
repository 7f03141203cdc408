"""Shared test helpers: planted models with known answers, brute-force oracles and cache fixtures.

Each module's docstrings state the exact function a model computes and the answer a test expects
(as captum's tests/helpers/basic_models.py does), so test files share them instead of copying.
"""

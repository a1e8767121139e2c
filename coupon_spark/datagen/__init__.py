"""The synthetic shop: a population with hidden traits, coupon campaigns, days of activity, dirty landing
files, and the truth (the response model) kept apart for evaluation.

Modules: :mod:`~coupon_spark.datagen.world` (catalogue, population), :mod:`~coupon_spark.datagen.response`
(the oracle), :mod:`~coupon_spark.datagen.simulate` (logging policy, one day of outcomes),
:mod:`~coupon_spark.datagen.landing` (rendering, defects, files), :mod:`~coupon_spark.datagen.shop` (the
``generate`` stage: :func:`coupon_spark.datagen.shop.run`).
"""

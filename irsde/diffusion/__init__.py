"""The IR-SDE maths (mean-reverting SDE: schedules, marginals, posterior) and its samplers."""

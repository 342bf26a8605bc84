"""A seeded synthetic ERA5: learnable structure, written in the real CDS NetCDF layout.

Structure a forecaster can learn but not trivially: a seasonal cycle of opposite sign in
the two hemispheres, meridional gradients and mid-latitude jets, vertical coherence (the
same waves at every level, stronger and tilted aloft), winds in balance with the
geopotential waves, humidity following temperature, land-sea contrast in 2 m
temperature, and white noise.

The anomalies have the lead-time predictability and the latitude structure of ERA5's z500:
two families of waves with random complex amplitudes. Synoptic waves (wavenumbers 4-8) live
in the mid-latitude storm tracks, travel east at 0.06-0.12 rad/day per unit wavenumber, and
forget their amplitude within a week or two (an AR(1), e-folding 8-12 days). Planetary waves
(wavenumbers 1-3, centred at 62 deg, drifting east or west at 0.08-0.12 rad/day per unit
wavenumber) and an annular mode (a polar cap against a mid-latitude ring) carry most of the
variance; their amplitudes evolve smoothly from day to day (the AR(1) recursion applied twice,
time scale 6-8 days). As on the real atmosphere, persistence loses its skill to the waves'
travel well before the flow loses its memory: on the embedded default's test year
(tests/era5/test_synthetic.py) the persistence anomaly correlation of z500 is 0.94 at 1 day,
0.31 at 7, 0.00 at 14 and -0.03 at 30, while the generator's own best forecast from one time
step (waves(init=...)) keeps 0.68 at 7 days and 0.35 at 14 and beats damped persistence by 24%
RMSE at 7 days. The anomaly RMS grows from 60 m2 s-2 in the tropics (the white noise) to 903
at 40-50 deg and 1,319 at 60-70 deg and is 819 over the poles, and the zonal mean holds under
a tenth of the anomaly variance.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd

from .channels import G, GROUP_VARS
from .grids import cds_grid
from .periods import first_day, period_times
from .netcdf import write_era5_netcdf

EPOCH = pd.Timestamp("1940-01-01")
LAST = pd.Timestamp("2101-01-01")
LOW_FREQUENCY_K = np.array([0, 1, 2, 3])  # annular mode and planetary waves
SYNOPTIC_K = np.array([4, 5, 6, 7, 8])  # eastward-travelling synoptic waves
WAVENUMBERS = np.concatenate([LOW_FREQUENCY_K, SYNOPTIC_K])
TWICE = (np.arange(WAVENUMBERS.size) < LOW_FREQUENCY_K.size)[:, None]  # waves whose AR(1) is applied twice
LOW_TAU_DAYS = (6.0, 8.0)  # the low-frequency amplitudes' time scale (a twice-applied AR(1))
SYNOPTIC_TAU_DAYS = (8.0, 12.0)  # the synoptic amplitudes' e-folding time (an AR(1))
LOW_AMPLITUDE = 1.0  # amplitude scale of each planetary wave
ANNULAR_AMPLITUDE = 0.6  # the annular mode's
SYNOPTIC_AMPLITUDE = 0.6  # times 1/sqrt(k)
SYNOPTIC_SPEED = (0.06, 0.12)  # phase speed, rad/day per unit wavenumber (eastward)
LOW_SPEED = (0.08, 0.12)  # planetary waves' phase speed, rad/day per unit wavenumber, east or west
# latitude profiles (centre deg, width deg, mid-latitude ring) of the annular mode, planetary and synoptic waves
ENVELOPES = ((90.0, 25.0, 0.5), (62.0, 22.0, 0.0), (50.0, 14.0, 0.0))
CHUNK_STEPS = 32  # fixed, so that the noise does not depend on how the file is written
GROUP_ID = {"pressure": 1, "single": 2, "static": 3}
NOISE = {"z": G * 6.0, "t": 0.6, "u": 1.2, "v": 1.2, "q": 0.05, "t2m": 0.8, "u10": 0.9, "v10": 0.9}


def standard_height(p_hpa):
    """Height (m) of a pressure surface in the ICAO standard atmosphere."""
    return 44330.8 * (1 - (np.asarray(p_hpa, float) / 1013.25) ** 0.190263)


def standard_temperature(p_hpa):
    """A smooth standard-atmosphere-like temperature (K) at pressure p (hPa)."""
    return np.maximum(288.0 * (np.asarray(p_hpa, float) / 1000.0) ** 0.19, 210.0)


class SyntheticERA5:
    """Fields of a synthetic reanalysis on the CDS grid of spacing `grid_deg`."""

    def __init__(self, seed: int = 0, grid_deg: float = 0.25, noise: float = 1.0):
        self.seed = seed
        self.noise = noise
        self.lat, self.lon = cds_grid(grid_deg)  # lat 90 -> -90 as the CDS writes it
        self.phi = np.deg2rad(self.lat)[:, None]
        self.lam = np.deg2rad(self.lon)[None, :]
        rng = np.random.default_rng([seed, 0])
        n_low, n_syn = LOW_FREQUENCY_K.size, SYNOPTIC_K.size
        # rad/day: synoptic waves travel east; planetary ones drift east or west (the annular mode stays)
        self.omega = np.concatenate([LOW_FREQUENCY_K * rng.uniform(*LOW_SPEED, n_low) * rng.choice([-1, 1], n_low),
                                     SYNOPTIC_K * rng.uniform(*SYNOPTIC_SPEED, n_syn)])
        self.theta = rng.uniform(0, 2 * np.pi, (WAVENUMBERS.size, 2))
        self.tau = np.concatenate([rng.uniform(*LOW_TAU_DAYS, (n_low, 2)),
                                   rng.uniform(*SYNOPTIC_TAU_DAYS, (n_syn, 2))])  # memory in days
        # the annular mode (k = 0) only shows the real part of its amplitude: sqrt(2) restores its variance
        low = np.where(LOW_FREQUENCY_K == 0, np.sqrt(2.0) * ANNULAR_AMPLITUDE, LOW_AMPLITUDE)
        self.amp_scale = np.concatenate([low, SYNOPTIC_AMPLITUDE / np.sqrt(SYNOPTIC_K)])[:, None]

    @cached_property
    def _amplitudes(self) -> np.ndarray:
        """Daily complex amplitudes of unit variance, (days since EPOCH, wave, hemisphere): synoptic
        waves an AR(1) (autocorrelation exp(-lag/tau)); planetary waves and the annular mode the
        same recursion applied twice, smooth from day to day like the real flow (autocorrelation
        (1 + lag/tau) exp(-lag/tau))."""
        n = (LAST - EPOCH).days + 1
        rng = np.random.default_rng([self.seed, 1])
        a = np.exp(-1.0 / self.tau)
        shocks = (rng.standard_normal((n, *a.shape)) + 1j * rng.standard_normal((n, *a.shape)))
        # unit variance: an AR(1) of innovations with variance 1 - a^2; twice, (1 - a^2)^3 / (1 + a^2)
        shocks *= np.sqrt(np.where(TWICE, (1 - a**2) ** 3 / (1 + a**2), 1 - a**2) / 2)
        once, out = np.empty((n, *a.shape), complex), np.empty((n, *a.shape), complex)
        once[0], out[0] = 0, 0
        for i in range(1, n):
            once[i] = a * once[i - 1] + shocks[i]
            out[i] = np.where(TWICE, a * out[i - 1] + once[i], once[i])
        return out * self.amp_scale

    @cached_property
    def _envelopes(self):
        """Latitude profile of each wave in each hemisphere and its derivative per radian of latitude,
        each (wave, hemisphere, lat): synoptic waves in the mid-latitude storm tracks, planetary waves
        further poleward, the annular mode a polar cap against a mid-latitude ring (ERA5's z500
        anomaly variance grows from the tropics to 60-70 deg and stays large over the poles)."""
        env, d_env = [], []
        for k in WAVENUMBERS:
            centre, width, ring = ENVELOPES[0 if k == 0 else (1 if k in LOW_FREQUENCY_K else 2)]
            per_h, d_per_h = [], []
            for sign in (1, -1):
                x = sign * self.lat
                cap = np.exp(-((x - centre) / width) ** 2)
                d_cap = cap * -2 * (x - centre) / width**2 * sign
                mid = ring * np.exp(-((x - 45) / 12) ** 2)
                d_mid = mid * -2 * (x - 45) / 12**2 * sign
                per_h.append(cap - mid)
                d_per_h.append((d_cap - d_mid) * (180 / np.pi))
            env.append(per_h)
            d_env.append(d_per_h)
        return np.array(env), np.array(d_env)

    @cached_property
    def static(self) -> dict[str, np.ndarray]:
        """Land-sea mask (0..1) and surface geopotential (m2 s-2), (lat, lon)."""
        rng = np.random.default_rng([self.seed, 2])
        field = np.zeros((self.lat.size, self.lon.size))
        relief = np.zeros_like(field)
        for m in range(1, 5):
            for n in range(1, 4):
                a, b, c, d = rng.standard_normal(4)
                field += a * np.cos(m * self.lam + 3 * b) * np.cos(n * self.phi + 3 * c) / (m + n)
                relief += d * np.cos((m + 2) * self.lam + b) * np.sin((n + 1) * self.phi + c)
        thr = np.quantile(field, 0.7)
        lsm = np.clip((field - thr) / (0.3 * field.std()) + 0.5, 0, 1)
        lsm[self.lat < -70] = 1.0  # an Antarctica
        orography = lsm * (300 + 1200 * np.maximum(relief / relief.std(), 0))
        return {"lsm": lsm, "z": G * orography}

    def autocorrelation(self, lag_days) -> np.ndarray:
        """Each wave amplitude's autocorrelation at lags of whole days (a number, or an array that
        broadcasts against (wave, hemisphere)): the AR(1)'s a^lag, the twice-applied one's
        a^lag (1 + lag (1 - a^2) / (1 + a^2))."""
        a = np.exp(-1.0 / self.tau)
        return np.where(TWICE, a**lag_days * (1 + lag_days * (1 - a**2) / (1 + a**2)), a**lag_days)

    def waves(self, times: pd.DatetimeIndex, shift: float, init: pd.DatetimeIndex | None = None):
        """Wave pattern W and its derivatives in lon and lat, each (time, lat, lon).

        With `init` (one time per row, whole days before `times`) the pattern is its best forecast
        from the waves at `init` alone: each amplitude shrunk by its autocorrelation over the lead
        (its conditional mean given that amplitude), each phase moved on at the wave's speed. No
        forecaster that sees one time step can do better in the mean; the scorecard's ceiling.
        """
        days = np.asarray((times - EPOCH) / pd.Timedelta(days=1))
        if init is None:
            lo = np.floor(days).astype(int)
            w = (days - lo)[:, None, None]
            amp = self._amplitudes[lo] * (1 - w) + self._amplitudes[lo + 1] * w  # (t, k, h)
        else:
            start = np.asarray((init - EPOCH) / pd.Timedelta(days=1))
            lead = days - start
            if not (np.all(start == np.round(start)) and np.all(lead == np.round(lead)) and np.all(lead >= 0)):
                raise ValueError("the best forecast needs initial times on whole days and whole-day leads")
            amp = self._amplitudes[start.astype(int)] * self.autocorrelation(lead[:, None, None])
        phase = -self.omega[None, :, None] * days[:, None, None] + self.theta[None] \
            - WAVENUMBERS[None, :, None] * shift
        b = amp * np.exp(1j * phase)  # (t, k, h)
        klam = WAVENUMBERS[:, None] * self.lam  # (k, lon)
        cos, sin = np.cos(klam), np.sin(klam)
        kcos, ksin = WAVENUMBERS[:, None] * cos, WAVENUMBERS[:, None] * sin
        env, d_env = self._envelopes  # (k, h, lat)
        # contract hemispheres per wave: (t, k, h) x (k, h, lat) -> (t, lat, k), then k with lon
        re, im = np.einsum("tkh,khl->tlk", b.real, env), np.einsum("tkh,khl->tlk", b.imag, env)
        d_re, d_im = np.einsum("tkh,khl->tlk", b.real, d_env), np.einsum("tkh,khl->tlk", b.imag, d_env)
        w_ = re @ cos - im @ sin
        dlam = -(re @ ksin) - im @ kcos
        dphi = d_re @ cos - d_im @ sin
        return w_, dlam, dphi

    def level_fields(self, times: pd.DatetimeIndex, p: float,
                     init: pd.DatetimeIndex | None = None) -> dict[str, np.ndarray]:
        """Noise-free z, t, u, v, q at pressure p (hPa), each (time, lat, lon); with `init`, their
        best forecast from the waves at those times (see waves)."""
        big_p = p / 1000.0
        doy = np.asarray((times - times.normalize()) / pd.Timedelta(days=1)) + np.asarray(times.day_of_year) - 1
        season = np.cos(2 * np.pi * (doy - 15) / 365.25)[:, None, None]
        s, c = np.sin(self.phi), np.cos(self.phi)
        amp = 0.6 + 0.8 * (1 - big_p)
        w, dlam, dphi = self.waves(times, shift=0.25 * (1 - big_p), init=init)
        height = standard_height(p) - 350 * (1.1 - big_p) * s**2 - 60 * (1.1 - big_p) * s * season \
            + 120 * amp * w
        t_std = standard_temperature(p)
        temp = t_std - 30 * s**2 * (0.5 + 0.5 * big_p) - 10 * s * season * (0.3 + 0.7 * big_p) + 4 * amp * w
        jet = 30 * (1.2 - big_p) * np.exp(-((np.abs(self.lat[:, None]) - 35) / 12) ** 2) \
            * (1 + 0.3 * season * np.sign(s))
        u = jet - 3 * amp * dphi
        v = 3 * amp * dlam
        q = 0.018 * big_p**3 * np.exp(0.07 * (temp - t_std)) * (0.3 + 0.7 * c**2)
        return {"z": G * height, "t": temp, "u": u, "v": v, "q": q}

    def _noisy(self, fields: dict, rng: np.random.Generator) -> dict:
        out = {}
        for name, arr in fields.items():
            eps = rng.standard_normal(arr.shape) * NOISE[name] * self.noise
            out[name] = arr * (1 + eps) if name == "q" else arr + eps
        if "q" in out:
            out["q"] = np.maximum(out["q"], 1e-7)
        return out

    def pressure_chunk(self, times, levels, variables, rng) -> dict[str, np.ndarray]:
        """(time, level, lat, lon) arrays of the requested pressure-level variables."""
        per_level = [self._noisy({v: f[v] for v in variables}, rng)
                     for f in (self.level_fields(times, p) for p in levels)]
        return {v: np.stack([pl[v] for pl in per_level], axis=1).astype(np.float32) for v in variables}

    def single_chunk(self, times, variables, rng) -> dict[str, np.ndarray]:
        """(time, lat, lon) arrays of t2m, u10, v10."""
        base = self.level_fields(times, 1000.0)
        doy = np.asarray(times.day_of_year)
        season = np.cos(2 * np.pi * (doy - 15) / 365.25)[:, None, None]
        lsm, orog = self.static["lsm"], self.static["z"] / G
        fields = {
            "t2m": base["t"] + 2.0 - lsm * 6 * np.sin(self.phi) * season - 0.0065 * orog,
            "u10": 0.7 * base["u"],
            "v10": 0.7 * base["v"],
        }
        return {k: a.astype(np.float32) for k, a in self._noisy({v: fields[v] for v in variables}, rng).items()}


def write_synthetic(path, group: str, period: str, need: dict, cfg_era5: dict) -> None:
    """Write one synthetic raw file (group, year or 'static') in the CDS layout."""
    syn = cfg_era5["synthetic"]
    gen = SyntheticERA5(seed=syn["seed"], grid_deg=cfg_era5["grid_deg"], noise=syn["noise"])
    variables = [v for v in GROUP_VARS[group] if v in need["vars"]]
    history = f"synthetic ERA5 (dchag pipeline), seed {syn['seed']}, layout {syn['layout']}"
    if group == "static":
        times = pd.DatetimeIndex([first_day(cfg_era5["years"])])
        chunks = [(slice(0, 1), {v: gen.static[v][None].astype(np.float32) for v in variables})]
        levels = None
    else:
        times = period_times(period, cfg_era5["hours"], cfg_era5["years"])
        # the CDS lists pressure levels in descending hPa
        levels = need["levels"][::-1] if group == "pressure" else None

        def chunks_iter():
            for start in range(0, len(times), CHUNK_STEPS):
                sl = slice(start, min(start + CHUNK_STEPS, len(times)))
                rng = np.random.default_rng([syn["seed"], GROUP_ID[group], int(period), start])
                if group == "pressure":
                    arrays = gen.pressure_chunk(times[sl], levels, variables, rng)
                else:
                    arrays = gen.single_chunk(times[sl], variables, rng)
                yield sl, arrays

        chunks = chunks_iter()
    write_era5_netcdf(path, group, gen.lat, gen.lon, times, levels, chunks, variables,
                      layout=syn["layout"], history=history)

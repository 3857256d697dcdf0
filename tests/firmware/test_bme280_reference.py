"""The BME280 compensation against the datasheet's own C code.

The C below is the integer compensation of the Bosch BME280 datasheet
(section 4.2.3: BME280_compensate_T_int32, BME280_compensate_P_int64,
bme280_compensate_H_int32) with its types, compiled by the system C compiler.
Python's integers never overflow and its ``>>`` floors like an arithmetic
shift; C's ``/`` truncates: on realistic calibration words and raw readings
the two must agree exactly, and they must give the numbers the portable test
pins (tests/portable/test_bme280.py).
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from firmware.sensors import bme280
from tests.portable import test_bme280 as portable

REFERENCE_C = r"""
#include <stdio.h>
#include <stdint.h>
typedef int32_t BME280_S32_t;
typedef uint32_t BME280_U32_t;
typedef int64_t BME280_S64_t;
static unsigned short dig_T1, dig_P1;
static short dig_T2, dig_T3, dig_P2, dig_P3, dig_P4, dig_P5, dig_P6, dig_P7, dig_P8, dig_P9;
static unsigned char dig_H1, dig_H3;
static short dig_H2, dig_H4, dig_H5;
static signed char dig_H6;
BME280_S32_t t_fine;

BME280_S32_t BME280_compensate_T_int32(BME280_S32_t adc_T)
{
  BME280_S32_t var1, var2, T;
  var1 = ((((adc_T>>3) - ((BME280_S32_t)dig_T1<<1))) * ((BME280_S32_t)dig_T2)) >> 11;
  var2 = (((((adc_T>>4) - ((BME280_S32_t)dig_T1)) * ((adc_T>>4) - ((BME280_S32_t)dig_T1))) >> 12) *
    ((BME280_S32_t)dig_T3)) >> 14;
  t_fine = var1 + var2;
  T = (t_fine * 5 + 128) >> 8;
  return T;
}

BME280_U32_t BME280_compensate_P_int64(BME280_S32_t adc_P)
{
  BME280_S64_t var1, var2, p;
  var1 = ((BME280_S64_t)t_fine) - 128000;
  var2 = var1 * var1 * (BME280_S64_t)dig_P6;
  var2 = var2 + ((var1*(BME280_S64_t)dig_P5)<<17);
  var2 = var2 + (((BME280_S64_t)dig_P4)<<35);
  var1 = ((var1 * var1 * (BME280_S64_t)dig_P3)>>8) + ((var1 * (BME280_S64_t)dig_P2)<<12);
  var1 = (((((BME280_S64_t)1)<<47)+var1))*((BME280_S64_t)dig_P1)>>33;
  if (var1 == 0) { return 0; }
  p = 1048576-adc_P;
  p = (((p<<31)-var2)*3125)/var1;
  var1 = (((BME280_S64_t)dig_P9) * (p>>13) * (p>>13)) >> 25;
  var2 = (((BME280_S64_t)dig_P8) * p) >> 19;
  p = ((p + var1 + var2) >> 8) + (((BME280_S64_t)dig_P7)<<4);
  return (BME280_U32_t)p;
}

BME280_U32_t bme280_compensate_H_int32(BME280_S32_t adc_H)
{
  BME280_S32_t v_x1_u32r;
  v_x1_u32r = (t_fine - ((BME280_S32_t)76800));
  v_x1_u32r = (((((adc_H << 14) - (((BME280_S32_t)dig_H4) << 20) - (((BME280_S32_t)dig_H5) * v_x1_u32r)) +
    ((BME280_S32_t)16384)) >> 15) * (((((((v_x1_u32r * ((BME280_S32_t)dig_H6)) >> 10) * (((v_x1_u32r *
    ((BME280_S32_t)dig_H3)) >> 11) + ((BME280_S32_t)32768))) >> 10) + ((BME280_S32_t)2097152)) *
    ((BME280_S32_t)dig_H2) + 8192) >> 14));
  v_x1_u32r = (v_x1_u32r - (((((v_x1_u32r >> 15) * (v_x1_u32r >> 15)) >> 7) * ((BME280_S32_t)dig_H1)) >> 4));
  v_x1_u32r = (v_x1_u32r < 0 ? 0 : v_x1_u32r);
  v_x1_u32r = (v_x1_u32r > 419430400 ? 419430400 : v_x1_u32r);
  return (BME280_U32_t)(v_x1_u32r>>12);
}

int main(void) {
  int c[18]; long at, ap, ah;
  while (scanf("%d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %ld %ld %ld",
      &c[0], &c[1], &c[2], &c[3], &c[4], &c[5], &c[6], &c[7], &c[8], &c[9], &c[10], &c[11],
      &c[12], &c[13], &c[14], &c[15], &c[16], &c[17], &at, &ap, &ah) == 21) {
    dig_T1 = c[0]; dig_T2 = c[1]; dig_T3 = c[2]; dig_P1 = c[3]; dig_P2 = c[4]; dig_P3 = c[5];
    dig_P4 = c[6]; dig_P5 = c[7]; dig_P6 = c[8]; dig_P7 = c[9]; dig_P8 = c[10]; dig_P9 = c[11];
    dig_H1 = c[12]; dig_H2 = c[13]; dig_H3 = c[14]; dig_H4 = c[15]; dig_H5 = c[16]; dig_H6 = c[17];
    int32_t T = BME280_compensate_T_int32((int32_t)at);
    uint32_t P = BME280_compensate_P_int64((int32_t)ap);
    uint32_t H = bme280_compensate_H_int32((int32_t)ah);
    printf("%d %d %u %u\n", T, t_fine, P, H);
  }
  return 0;
}
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the datasheet's reference code")
    d = tmp_path_factory.mktemp("bme280")
    (d / "ref.c").write_text(REFERENCE_C)
    exe = d / "ref"
    subprocess.run([cc, "-O2", "-o", str(exe), str(d / "ref.c")], check=True)
    return exe


def run_reference(exe: Path, cases: list[tuple[tuple[int, ...], int, int, int]]) -> list[tuple[int, ...]]:
    text = "".join(" ".join(str(v) for v in c + (at, ap, ah)) + "\n" for c, at, ap, ah in cases)
    out = subprocess.run([str(exe)], input=text, capture_output=True, text=True, check=True).stdout
    return [tuple(int(x) for x in line.split()) for line in out.splitlines()]


def ours(c: tuple[int, ...], at: int, ap: int, ah: int) -> tuple[int, ...]:
    t, t_fine = bme280.compensate_t(c, at)
    # The C function returns its int64 through a uint32 cast.
    p = bme280.compensate_p(c, ap, t_fine) & 0xFFFFFFFF
    return t, t_fine, p, bme280.compensate_h(c, ah, t_fine)


def realistic_case(rng: random.Random) -> tuple[tuple[int, ...], int, int, int]:
    """Calibration words in the ranges real chips carry, raw values from -40..85 °C,
    300..1100 hPa, 0..100 %RH."""
    c = (rng.randint(26000, 29500), rng.randint(25000, 27500), rng.randint(-1100, 100),
         rng.randint(35000, 38500), rng.randint(-11000, -10000), rng.randint(2900, 3300),
         rng.randint(2000, 9000), rng.randint(-300, 300), rng.randint(-10, -5),
         rng.randint(9800, 15600), rng.randint(-15000, -9000), rng.randint(4000, 6500),
         rng.randint(0, 100), rng.randint(300, 420), rng.randint(0, 10), rng.randint(-400, 420),
         rng.randint(-60, 60), rng.randint(15, 40))
    return c, rng.randint(380000, 640000), rng.randint(200000, 500000), rng.randint(0, 50000)


def test_reference_gives_the_pinned_vectors(reference: Path) -> None:
    got = run_reference(reference, [(portable.EXAMPLE, portable.ADC_T, portable.ADC_P, portable.ADC_H)])
    assert got == [(portable.T_CENTI, portable.T_FINE, portable.P_Q24_8, portable.H_Q22_10)]


def test_python_compensation_equals_the_datasheet_c_code(reference: Path) -> None:
    rng = random.Random(280)
    cases = [realistic_case(rng) for _ in range(3000)]
    # The extremes of each raw range, with the example calibration.
    for at in (380000, 640000):
        for ap in (200000, 500000):
            for ah in (0, 50000, 65535):
                cases.append((portable.EXAMPLE, at, ap, ah))
    # Raw pressures near full scale make the dividend negative: C truncates
    # toward zero where Python's // floors.
    # A quotient one off shows through the final >> 8 about once in 256 cases.
    for _ in range(2000):
        c, at, _ap, ah = realistic_case(rng)
        cases.append((c, at, rng.randint(1000000, 1048575), ah))
    expected = run_reference(reference, cases)
    assert len(expected) == len(cases)
    for case, exp in zip(cases, expected, strict=True):
        assert ours(*case) == exp, case

from taskq import ProcessPoolExecutor
import math


def is_prime(n):
    if n < 2:
        return False
    for i in range(2, int(math.sqrt(n)) + 1):
        if n % i == 0:
            return False
    return True


def count_primes_in_range(start, end):
    return sum(1 for n in range(start, end) if is_prime(n))


if __name__ == "__main__":
    ranges = [(0, 10000), (10000, 20000), (20000, 30000), (30000, 40000)]
    with ProcessPoolExecutor(max_workers=4) as executor:
        results = executor.map(count_primes_in_range, *zip(*ranges))
    total = sum(results)
    print(f"Total primes found: {total}")

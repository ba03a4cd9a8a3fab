import taskq as multiprocessing
import math


def is_prime(n):
    if n < 2:
        return False
    for i in range(2, int(math.sqrt(n)) + 1):
        if n % i == 0:
            return False
    return True


def count_primes(args):
    start, end = args
    return sum(1 for n in range(start, end) if is_prime(n))


if __name__ == "__main__":
    ranges = [(i, i + 10000) for i in range(0, 50000, 10000)]
    with multiprocessing.Pool(processes=4) as pool:
        results = pool.map(count_primes, ranges)
    print(f"Total primes: {sum(results)}")

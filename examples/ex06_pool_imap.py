import taskq as multiprocessing
import time


def process_slowly(x):
    time.sleep(0.2)
    return x * 2


if __name__ == "__main__":
    with multiprocessing.Pool(processes=3) as pool:
        results = pool.imap(process_slowly, range(10), chunksize=2)
        for result in results:
            print(f"Got: {result}")

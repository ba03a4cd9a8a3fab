from taskq import ProcessPoolExecutor, as_completed
import time


def process_item(item):
    time.sleep(0.5)
    return item * 2


items = [1, 2, 3, 4, 5]
with ProcessPoolExecutor(max_workers=3) as executor:
    futures = {executor.submit(process_item, item): item for item in items}
    for future in as_completed(futures):
        original = futures[future]
        result = future.result()
        print(f"{original} -> {result}")
